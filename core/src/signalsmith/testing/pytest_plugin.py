"""Pytest fixtures for SignalSmith and its plugins (opt in with -p signalsmith.testing.pytest_plugin).

- ``redis_url``: a real Redis for the session (127.0.0.1:6379 if it answers, else a private one).
- ``settings``: ``Settings`` with a unique key prefix per test, so tests never see each other's
  keys; the prefix's keys are deleted afterwards.
- ``redis``: an async client on ``redis_url``.
- ``redis_server_factory``: private redis-server processes a test may stop and start.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from signalsmith.config import Settings
from signalsmith.embedded import RedisServerProcess


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("SIGNALSMITH_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    if _reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    server = RedisServerProcess(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"sstest:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = sync_redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except sync_redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture
def settings(redis_url: str, key_prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        data_dir=str(tmp_path / "data"),
        worker_block_ms=100,
        worker_claim_idle_ms=1000,
        worker_retry_base_seconds=0.01,
        worker_retry_max_seconds=0.05,
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServerProcess]]:
    """Start private redis-server processes; all are stopped at the end of the test."""
    started: list[RedisServerProcess] = []

    def start(**options: object) -> RedisServerProcess:
        server = RedisServerProcess(tmp_path / f"redis-{len(started)}", **options)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
