"""Whole-system test helpers: real ``signalsmith serve`` processes in front of a real Redis."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from signalsmith.embedded import free_port

STARTUP_TIMEOUT = 60.0


class Collector:
    """One ``python -m signalsmith serve`` process with keys from ``signalsmith.testing.env_keys``."""

    def __init__(
        self,
        *,
        redis_url: str,
        key_prefix: str,
        write_keys: dict[str, str],
        data_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.write_keys = write_keys
        self.log_path = data_dir / f"collector-{self.port}.log"
        env = {
            key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")
        }
        env.update(
            {
                "SIGNALSMITH_REDIS_URL": redis_url,
                "SIGNALSMITH_KEY_PREFIX": key_prefix,
                "SIGNALSMITH_DATA_DIR": str(data_dir),
                "SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.env_keys",
                # Only the test key table: no installed plugin (a key store in Redis, sinks)
                # takes part, so the test sees the core's own behaviour.
                "SIGNALSMITH_LOAD_PLUGINS": "signalsmith.testing.env_keys",
                "SIGNALSMITH_TEST_WRITE_KEYS": ",".join(f"{k}={v}" for k, v in write_keys.items()),
                "PYTHONUNBUFFERED": "1",
                **(extra_env or {}),
            }
        )
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Collector:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "signalsmith", "serve", "--port", str(self.port)],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"signalsmith serve exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"signalsmith serve did not answer /healthz:\n{self.log_tail()}")

    def log_tail(self, size: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-size:]

    def stop(self) -> None:
        """Stop the server the way an operator would (SIGINT), then make sure it is gone."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None


@pytest.fixture
def write_key() -> str:
    return f"wk_test_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def start_collector(tmp_path: Path) -> Iterator[Callable[..., Collector]]:
    """Start ``signalsmith serve`` processes; each is stopped at the end of the test."""
    started: list[Collector] = []

    def start(
        *,
        redis_url: str,
        key_prefix: str,
        write_keys: dict[str, str],
        extra_env: dict[str, str] | None = None,
    ) -> Collector:
        collector = Collector(
            redis_url=redis_url,
            key_prefix=key_prefix,
            write_keys=write_keys,
            data_dir=tmp_path / f"collector-{len(started)}",
            extra_env=extra_env,
        )
        started.append(collector)
        return collector.start()

    yield start
    for collector in started:
        collector.stop()


@pytest.fixture
def collector(
    start_collector: Callable[..., Collector], redis_url: str, key_prefix: str, write_key: str
) -> Collector:
    """A collector on the session's Redis, under this test's key prefix, knowing ``write_key``."""
    return start_collector(
        redis_url=redis_url, key_prefix=key_prefix, write_keys={write_key: "src-system-test"}
    )


# --- `signalsmith serve` on the embedded defaults ------------------------------------------------


def clean_env() -> dict[str, str]:
    """This process's environment without any SIGNALSMITH_* setting: the embedded defaults."""
    return {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}


# How tests run `signalsmith`: this interpreter with -m, whatever the PATH holds.
SIGNALSMITH = (sys.executable, "-m", "signalsmith")


def serve_command(port: int, *args: str, launcher: tuple[str, ...] = SIGNALSMITH) -> list[str]:
    return [*launcher, "serve", "--port", str(port), *args]


def process_table() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, command line)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        # The command name in stat is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":  # a zombie has exited; only its parent has not reaped it yet
            continue
        table[int(entry.name)] = (int(fields[1]), cmdline)
    return table


def descendants(pid: int) -> dict[int, str]:
    """The live processes below ``pid``: pid -> command line."""
    table = process_table()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmdline) in table.items():
            if ppid == parent and child not in found:
                found[child] = cmdline
                frontier.append(child)
    return found


def still_running(processes: dict[int, str]) -> dict[int, str]:
    """Those of ``processes`` that are alive with the same command line (not a reused pid)."""
    table = process_table()
    return {pid: cmd for pid, cmd in processes.items() if table.get(pid, (0, ""))[1] == cmd}


class EmbeddedServer:
    """A `signalsmith serve` process on the embedded defaults, and the banner it printed.

    It runs in a session of its own, so ``signal_group`` reaches it the way Ctrl-C in a terminal
    reaches a foreground command: every process in its group.
    """

    def __init__(
        self, process: subprocess.Popen[bytes], banner: str, port: int, log_path: Path
    ) -> None:
        self.process = process
        self.banner = banner
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        # Everything it started, to make sure none outlives the test.
        self.started = descendants(process.pid)

    def field(self, label: str) -> str:
        """The value the banner prints after ``label:`` (its first word)."""
        match = re.search(rf"^\s*{re.escape(label)}:\s*(\S+)", self.banner, re.MULTILINE)
        assert match, f"{label!r} not in the start banner:\n{self.banner}"
        return match.group(1)

    @property
    def curl(self) -> str:
        """The copy-paste `curl` the banner prints."""
        lines = self.banner.splitlines()
        index = next(i for i, line in enumerate(lines) if "Send a track event" in line)
        return lines[index + 1].strip()

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def children(self) -> dict[int, str]:
        found = descendants(self.process.pid)
        self.started.update(found)
        return found

    def leftovers(self) -> dict[int, str]:
        """The processes it started that are still alive."""
        return still_running(self.started)

    def redis_pid(self) -> int:
        [pid] = [pid for pid, cmd in self.children().items() if "redis-server" in cmd]
        return pid

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL if it lingers; then nothing it started
        may remain."""
        self.children()
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait()
        deadline = time.monotonic() + 10
        while still_running(self.started) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in still_running(self.started):  # a leak the test should have caught
            os.kill(pid, signal.SIGKILL)


def start_embedded_server(
    workdir: Path,
    port: int,
    extra_env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    launcher: tuple[str, ...] = SIGNALSMITH,
) -> EmbeddedServer:
    """Run `signalsmith serve` in ``workdir`` with no SIGNALSMITH_* setting (plus ``extra_env``)
    and options ``args``; return once it printed its banner and answers /healthz."""
    log_path = workdir / f"serve-{port}-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command(port, *args, launcher=launcher),
            cwd=workdir,
            env={**clean_env(), "PYTHONUNBUFFERED": "1", **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    banner = ""
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        lines = text.splitlines(keepends=True)
        curl = next((i for i, line in enumerate(lines) if line.strip().startswith("curl ")), None)
        if curl is not None:
            banner = "".join(lines[: curl + 1])
            break
        if process.poll() is not None:
            break
        time.sleep(0.05)
    if not banner:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        raise AssertionError(f"serve did not print its banner:\n{log_path.read_text()}")
    # The collector answers once Granian has started its worker.
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return EmbeddedServer(process, banner, port, log_path)


@pytest.fixture
def embedded_workdir() -> Iterator[Path]:
    """A fresh, short directory: the embedded Redis listens on a unix socket under it."""
    path = Path(tempfile.mkdtemp(prefix="ss-serve-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded_server() -> Iterator[Callable[..., EmbeddedServer]]:
    """Start embedded servers (``start_embedded_server``); any still running are stopped after."""
    started: list[EmbeddedServer] = []

    def start(
        workdir: Path,
        port: int,
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        launcher: tuple[str, ...] = SIGNALSMITH,
    ) -> EmbeddedServer:
        server = start_embedded_server(workdir, port, extra_env, args, launcher)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
