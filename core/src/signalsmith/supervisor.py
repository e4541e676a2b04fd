"""Keeps the embedded Redis of `signalsmith serve` running, and says how it is doing.

A thread of the serve process starts the redis-server child and waits on it. When it exits
without being asked to (killed, out of memory, a crash), the thread starts it again from the
same append-only file, after a backoff that grows while it keeps failing. Its state goes to a
small file beside the Redis data (``status.json``), which the collector process reads for
``/healthz`` and ``/readyz``: it is a child of the serve process, not of the collector.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec

from signalsmith.embedded import RedisServerProcess

log = logging.getLogger("signalsmith.supervisor")

STATUS_FILE = "status.json"
# First restart after this many seconds, doubling while Redis keeps dying, up to the maximum.
RESTART_BACKOFF_SECONDS = 1.0
RESTART_BACKOFF_MAX_SECONDS = 30.0
# A Redis that ran this long before it died starts the backoff over.
STABLE_AFTER_SECONDS = 60.0


class RedisStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What the supervisor last published about the embedded Redis."""

    state: Literal["running", "restarting", "stopped"]
    detail: str
    # The supervising process: a status left by a dead one says nothing about now.
    supervisor_pid: int
    redis_pid: int | None = None
    restarts: int = 0


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def read_status(redis_dir: Path) -> RedisStatus | None:
    """The status the supervisor of ``redis_dir`` published, if one is running."""
    try:
        status = msgspec.json.decode((redis_dir / STATUS_FILE).read_bytes(), type=RedisStatus)
    except (OSError, msgspec.DecodeError):
        return None
    try:
        os.kill(status.supervisor_pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return status


class RedisSupervisor:
    """Runs ``server`` from a thread that restarts it whenever it dies, until ``stop()``.

    The thread both starts and waits on every redis-server: the kernel's parent-death signal
    is tied to the thread that started a child, and this one lives until the child is stopped.
    """

    def __init__(self, server: RedisServerProcess) -> None:
        self.server = server
        self._status_path = server.data_dir / STATUS_FILE
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        # Held while a redis-server is being started or stopped, so stop() never races a start.
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="redis-supervisor", daemon=True)
        self._restarts = 0

    def start(self) -> RedisSupervisor:
        """Start Redis and its supervision; raise what stopped the first start."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error
        return self

    def stop(self) -> None:
        """Stop supervising, then stop Redis (SIGTERM: it finishes its append-only file)."""
        self._stopping.set()
        with self._lock:
            self.server.stop()
        self._thread.join(timeout=30)
        self._publish("stopped", "stopped with signalsmith serve")

    def _publish(self, state: Literal["running", "restarting", "stopped"], detail: str) -> None:
        process = self.server.process
        status = RedisStatus(
            state=state,
            detail=detail,
            supervisor_pid=os.getpid(),
            redis_pid=process.pid if process is not None and state == "running" else None,
            restarts=self._restarts,
        )
        temporary = self._status_path.with_name(f".{STATUS_FILE}.tmp")
        try:
            temporary.write_bytes(msgspec.json.encode(status))
            os.replace(temporary, self._status_path)
        except OSError as error:  # the health endpoints then know less; Redis still runs
            log.warning("could not record the embedded Redis status: %s", error)

    def _run(self) -> None:
        try:
            with self._lock:
                self.server.start()
        except BaseException as error:
            self._start_error = error
            self._started.set()
            return
        self._publish("running", "running")
        self._started.set()
        failures = 0
        while True:
            process = self.server.process
            if process is None:  # stopped by stop()
                return
            running_since = time.monotonic()
            returncode = process.wait()
            if self._stopping.is_set():
                return
            failures = (
                1 if time.monotonic() - running_since >= STABLE_AFTER_SECONDS else failures + 1
            )
            reason = f"{describe_exit(returncode)} at {datetime.now(UTC):%H:%M:%S} UTC"
            if not self._restart(reason, failures):
                return

    def _restart(self, reason: str, failures: int) -> bool:
        """Start Redis again after a backoff, as often as it takes; False once stopping."""
        while True:
            delay = min(RESTART_BACKOFF_MAX_SECONDS, RESTART_BACKOFF_SECONDS * 2 ** (failures - 1))
            detail = f"restarting after it {reason}: attempt {failures} in {delay:.0f} s"
            log.warning("embedded Redis %s", detail)
            self._publish("restarting", detail)
            if self._stopping.wait(delay):
                return False
            with self._lock:
                if self._stopping.is_set():
                    return False
                try:
                    # The same data directory: it loads its append-only file.
                    self.server.start()
                except RuntimeError as error:
                    log.error("embedded Redis did not start again: %s", error)
                    reason = f"failed to start again at {datetime.now(UTC):%H:%M:%S} UTC"
                    failures += 1
                    continue
            self._restarts += 1
            pid = self.server.process.pid if self.server.process else None
            log.warning("embedded Redis restarted from its append-only file (PID %s)", pid)
            times = "once" if self._restarts == 1 else f"{self._restarts} times"
            self._publish("running", f"running; restarted {times}, last after it {reason}")
            return True
