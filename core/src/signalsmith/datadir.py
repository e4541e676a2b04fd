"""The embedded `signalsmith serve`'s hold on its data directory.

``serve.lock`` in the data directory is locked (``flock``) by the serve process for as long as it
runs, and by its Granian worker, which inherits the descriptor: the lock is free exactly when no
process of that server is left, however it ended (``kill -9`` included). A new server then takes
over what the dead one left (``server.json``, a stale Redis socket); while any process of a live
one holds it, the new one refuses to start and names the PIDs to stop.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from signalsmith.embedded import RedisServerProcess
from signalsmith.processes import describe_pid, holders_of_file, pid_alive

log = logging.getLogger("signalsmith.datadir")

LOCK_FILE = "serve.lock"
# The children of a server killed with SIGKILL get SIGTERM from the kernel and finish their
# shutdown (the worker acknowledges its batch); this is how long a new server waits for them.
LEFTOVER_WAIT_SECONDS = 30.0


class DataDirInUse(Exception):
    """Another server (or what is left of one) holds the data directory; the message says who."""


class DataDirLock:
    """The lock on one data directory; ``acquire`` it before touching anything in it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None
        # The PID of a server that held the lock and did not let go of it cleanly (it died).
        self.took_over_from: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, wait: float = LEFTOVER_WAIT_SECONDS) -> None:
        """Lock the directory (it must exist), waiting up to ``wait`` seconds for what is left
        of a dead server to exit; raise ``DataDirInUse`` naming a live one or the leftovers."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        waiting_logged = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                owner = _recorded_pid(fd)
                if owner is not None and pid_alive(owner):
                    raise DataDirInUse(
                        f"the data directory {self.data_dir} is in use by another signalsmith "
                        f"serve ({describe_pid(owner)}); stop it first (kill {owner}), or give "
                        "this one another directory with --data-dir"
                    )
                holders = holders_of_file(self.path)
                if time.monotonic() >= deadline:
                    named = ", ".join(describe_pid(pid) for pid in holders) or "unknown processes"
                    pids = " ".join(str(pid) for pid in holders) or "<PID>"
                    raise DataDirInUse(
                        f"the data directory {self.data_dir} is still held by what an exited "
                        f"signalsmith serve left running: {named}; stop it (kill {pids})"
                    )
                if not waiting_logged:
                    log.warning(
                        "waiting up to %.0f s for %s, left by a signalsmith serve that exited, "
                        "to let go of %s",
                        wait,
                        ", ".join(describe_pid(pid) for pid in holders) or "its processes",
                        self.data_dir,
                    )
                    waiting_logged = True
                time.sleep(0.1)
        except BaseException:
            os.close(fd)
            raise
        # Ours now. A PID still recorded is a server that died holding it (``release`` clears
        # it); then record ours, for the message a later server prints.
        self.took_over_from = _recorded_pid(fd)
        if self.took_over_from is not None:
            log.warning(
                "taking over %s from a signalsmith serve (PID %d) that did not stop cleanly",
                self.data_dir,
                self.took_over_from,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # the last descriptor closing releases the lock
        self._fd = None

    def take_over_redis(
        self, server: RedisServerProcess, *, wait: float = LEFTOVER_WAIT_SECONDS
    ) -> None:
        """Make sure no Redis of an earlier server still serves this data directory.

        With the lock held, an answering Redis here was left by a server that is gone; it got
        SIGTERM when its parent died and is finishing its append-only file. Wait for it, since
        two servers on one append-only file would corrupt it; name it if it stays.
        """
        deadline = time.monotonic() + wait
        while (pid := server.answering_pid()) is not None:
            if time.monotonic() >= deadline:
                raise DataDirInUse(
                    f"a Redis left by an exited signalsmith serve still runs on "
                    f"{self.data_dir} ({describe_pid(pid)}); stop it (kill {pid})"
                )
            time.sleep(0.1)


def _recorded_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    except (OSError, ValueError):
        return None
