"""Processes as the operating system sees them: parent-death signals, and who holds what.

`signalsmith serve` starts children (the embedded Redis, Granian's worker) that must not outlive
it, and refuses to start next to something that holds its port or data directory; these are the
Linux facilities both rest on (``/proc`` and ``prctl``). Elsewhere they do nothing and find no
one, and the callers fall back on their plain error messages.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1

_prctl: Callable[..., int] | None = None
if sys.platform == "linux":
    # Resolved now, not in the child between fork and exec, where importing is unsafe.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(signum: int, expected_parent: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies (Linux).

    If the parent is already gone (it died between starting us and this call, so the kernel
    will never send the signal), send it to ourselves now.
    """
    if _prctl is not None and _prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if os.getppid() != expected_parent:
        os.kill(os.getpid(), signum)


def parent_death_preexec(signum: int) -> Callable[[], None]:
    """A ``subprocess.Popen`` ``preexec_fn``: the child gets ``signum`` when this process dies.

    The kernel ties the signal to the thread that starts the child: start it from a thread that
    lives as long as the child should (``signalsmith.supervisor`` does).
    """
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(signum, parent)

    return preexec


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        return True
    return True


def describe_pid(pid: int) -> str:
    """``PID 123 (python -m signalsmith serve --port 8000)``: enough to recognise it."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"PID {pid}"
    words = [word.decode(errors="replace") for word in argv if word]
    if not words:
        return f"PID {pid}"
    words[0] = os.path.basename(words[0])
    command = " ".join(words)
    if len(command) > 80:
        command = command[:77] + "..."
    return f"PID {pid} ({command})"


def _open_by(targets: set[str]) -> list[int]:
    """PIDs of the processes with an open file descriptor whose link is one of ``targets``."""
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:  # gone, or not ours to look at
            continue
        if links & targets:
            found.append(int(entry.name))
    return sorted(found)


def holders_of_file(path: Path) -> list[int]:
    """PIDs (other than ours) that have ``path`` open."""
    return _open_by({str(path.resolve())})


def listeners_on_port(port: int) -> list[int]:
    """PIDs (other than ours) with a TCP socket listening on ``port``, on any address."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    return _open_by(inodes) if inodes else []
