"""Helpers for the debugger's tests: the collector app and a worker with the plugin (real Redis),
traces read back through the API, and a real `signalsmith serve` for the live feed over HTTP."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

import signalsmith_debugger.plugin as debugger_plugin
from signalsmith import Settings, Source
from signalsmith.testing import (
    StaticKeys,
    collector_client,
    free_port,
    plugin_manager,
    running_worker,
)

ADMIN_TOKEN = "debugger-test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WEB_KEY = "wk-debugger-web"
APP_KEY = "wk-debugger-app"
KEYS = {WEB_KEY: Source(id="web", name="web"), APP_KEY: Source(id="app", name="app")}
DEADLINE_SECONDS = 15.0
DEBUGGER = (debugger_plugin, "debugger")


def basic(key: str = WEB_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def quick_debugger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flushes every 10 ms, so tests wait little (the setting is read at each startup)."""
    monkeypatch.setenv("SIGNALSMITH_DEBUGGER_FLUSH_SECONDS", "0.01")


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, admin_token=ADMIN_TOKEN)


@pytest.fixture
async def client(admin_settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The collector app with write keys for sources web and app, and the debugger; and a
    worker with the debugger, which records the buffered events."""
    pm = plugin_manager(StaticKeys(KEYS), DEBUGGER)
    async with with_worker(admin_settings, collector_client(admin_settings, pm=pm)) as test_client:
        yield test_client


async def eventually(
    probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], what: str
) -> Any:
    """Poll ``probe`` until ``done`` holds for its result (the recorder writes asynchronously)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if done(last):
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen in {DEADLINE_SECONDS}s; last: {last!r}")


async def trace_of(
    client: AsyncTestClient[Litestar],
    message_id: str,
    done: Callable[[dict[str, Any]], bool] = lambda trace: True,
    headers: dict[str, str] = ADMIN,
) -> dict[str, Any]:
    """The admin API's trace of ``message_id`` once ``done`` holds for it."""

    async def probe() -> dict[str, Any] | None:
        response = await client.get(f"/api/v1/admin/trace/{message_id}", headers=headers)
        return response.json() if response.status_code == 200 else None

    return await eventually(
        probe, lambda trace: trace is not None and done(trace), f"trace {message_id}"
    )


def steps(trace: dict[str, Any]) -> list[tuple[str, str]]:
    return [(step["stage"], step["status"]) for step in trace["steps"]]


@asynccontextmanager
async def with_worker(
    settings: Settings, client: AbstractAsyncContextManager[AsyncTestClient[Litestar]]
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """``client``, with a worker running the debugger beside it: the worker records every
    buffered event (the debugger's sink), as it does in a deployment."""
    async with client as entered, running_worker(settings, DEBUGGER):
        yield entered


class Kit:
    """The helpers above, for tests (test modules cannot import this conftest)."""

    ADMIN = ADMIN
    ADMIN_TOKEN = ADMIN_TOKEN
    APP_KEY = APP_KEY
    WEB_KEY = WEB_KEY
    KEYS = KEYS
    DEBUGGER = DEBUGGER
    basic = staticmethod(basic)
    bearer = staticmethod(bearer)
    eventually = staticmethod(eventually)
    trace_of = staticmethod(trace_of)
    steps = staticmethod(steps)
    with_worker = staticmethod(with_worker)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


# --- a real server -------------------------------------------------------------------------


class Server:
    """`python -m signalsmith serve` on the test's Redis, with the debugger and test keys, and
    `python -m signalsmith worker` beside it (the debugger's sink records buffered events)."""

    def __init__(self, settings: Settings, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{self.port}.log"
        keys = ",".join(f"{key}={source.id}" for key, source in KEYS.items())
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SIGNALSMITH_")},
            "SIGNALSMITH_REDIS_URL": settings.redis_url,
            "SIGNALSMITH_KEY_PREFIX": settings.key_prefix,
            "SIGNALSMITH_DATA_DIR": str(workdir / "data"),
            "SIGNALSMITH_ADMIN_TOKEN": ADMIN_TOKEN,
            "SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.env_keys",
            "SIGNALSMITH_LOAD_PLUGINS": "debugger",
            "SIGNALSMITH_TEST_WRITE_KEYS": keys,
            "SIGNALSMITH_DEBUGGER_FLUSH_SECONDS": "0.01",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "signalsmith", "serve", "--port", str(self.port)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "signalsmith", "worker"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None or self.worker.poll() is not None:
                raise RuntimeError(f"serve or worker exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        for process in (self.process, self.worker):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in (self.process, self.worker):
            if process is None:
                continue
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = self.worker = None


@pytest.fixture
def serve(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real servers (``Server``) with extra environment; stopped after the test."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        server = Server(settings, tmp_path, env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
