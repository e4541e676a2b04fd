"""Helpers for the contracts plugin's tests: a collector with the plugin, a workspace applied
through the admin API (as a user would), and what reached Redis read back."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.testing import AsyncTestClient

import signalsmith_contracts.plugin as contracts_plugin
from signalsmith import VIOLATION_RECORD_FIELD, Settings, Source, ViolationRecord
from signalsmith.testing import StaticKeys, collector_client, plugin_manager

ADMIN_TOKEN = "contracts-test-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WEB_KEY = "wk-contracts-web"
APP_KEY = "wk-contracts-app"
KEYS = StaticKeys({WEB_KEY: Source(id="web", name="web"), APP_KEY: Source(id="app", name="app")})


def auth(key: str = WEB_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, admin_token=ADMIN_TOKEN)


@pytest.fixture
async def client(admin_settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    pm = plugin_manager(KEYS, (contracts_plugin, "contracts"))
    async with collector_client(admin_settings, pm=pm) as test_client:
        yield test_client


class Harness:
    """What a test does through the admin API and Redis (a fixture: tests cannot import this)."""

    def __init__(
        self, client: AsyncTestClient[Litestar], redis: aioredis.Redis, prefix: str
    ) -> None:
        self.client = client
        self.redis = redis
        self.prefix = prefix

    async def apply(self, document: str, files: dict[str, Any] | None = None) -> int:
        return await apply_workspace(self.client, document, files)

    async def refused(
        self, document: str, files: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return await refused(self.client, document, files)

    async def records(self) -> list[ViolationRecord]:
        return await violation_records(self.redis, self.prefix)

    @property
    def auth(self) -> dict[str, str]:
        return auth(WEB_KEY)

    async def send(self, *messages: dict[str, Any], key: str = "web") -> dict[str, Any]:
        write_key = {"web": WEB_KEY, "app": APP_KEY}[key]
        answer = await self.client.post(
            "/v1/batch", json={"batch": list(messages)}, headers=auth(write_key)
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def harness(
    client: AsyncTestClient[Litestar], redis: aioredis.Redis, admin_settings: Settings
) -> Harness:
    return Harness(client, redis, admin_settings.key_prefix)


@pytest.fixture
def make_harness(redis: aioredis.Redis, admin_settings: Settings) -> Any:
    """A harness on a client the test built itself (other plugins beside the contracts one)."""
    return lambda client: Harness(client, redis, admin_settings.key_prefix)


@pytest.fixture
def keys() -> StaticKeys:
    return KEYS


async def apply_workspace(
    client: AsyncTestClient[Litestar], document: str, files: dict[str, Any] | None = None
) -> int:
    """Apply ``document`` through the admin API and wait until the collector runs it."""
    body = {
        "document": document,
        "files": {
            name: content if isinstance(content, str) else json.dumps(content)
            for name, content in (files or {}).items()
        },
    }
    answer = await client.put("/api/v1/admin/config/", json=body, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    version = answer.json()["version"]
    runtime = client.app.state.runtime
    deadline = asyncio.get_running_loop().time() + 10
    while runtime.workspace.active is None or runtime.workspace.active.version != version:
        assert asyncio.get_running_loop().time() < deadline, runtime.workspace.status()
        await asyncio.sleep(0.02)
    return version


async def refused(
    client: AsyncTestClient[Litestar], document: str, files: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The errors the admin API answers for an invalid ``document``."""
    body = {
        "document": document,
        "files": {
            name: content if isinstance(content, str) else json.dumps(content)
            for name, content in (files or {}).items()
        },
    }
    answer = await client.put("/api/v1/admin/config/", json=body, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    return answer.json()["errors"]


async def violation_records(redis: aioredis.Redis, key_prefix: str) -> list[ViolationRecord]:
    entries = await redis.xrange(f"{key_prefix}:violations")
    return [
        msgspec.msgpack.decode(fields[VIOLATION_RECORD_FIELD.encode()], type=ViolationRecord)
        for _, fields in entries
    ]
