"""The admin API's guard: only the configured admin token opens /api/v1/admin."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import msgspec
import pytest
from litestar import get
from litestar.testing import AsyncTestClient

from signalsmith import hookimpl
from signalsmith.admin import ensure_admin_token
from signalsmith.config import Settings
from signalsmith.records import Source
from signalsmith.testing import StaticKeys, collector_app

WRITE_KEY = "wk-admin-test"
ADMIN_TOKEN = "ssadm_test-token-0123456789"


class AdminRoutes:
    """A plugin adding one admin endpoint."""

    @hookimpl
    def register_admin_routes(self, register):  # type: ignore[no-untyped-def]
        @get("/echo", sync_to_thread=False)
        def echo() -> dict[str, str]:
            return {"secret": "only for admins"}

        register(echo)


def app_for(settings: Settings, token: str | None):  # type: ignore[no-untyped-def]
    return collector_app(
        msgspec.structs.replace(settings, admin_token=token),
        (StaticKeys({WRITE_KEY: Source(id="web", name="web")}), "keys"),
        (AdminRoutes(), "admin-routes"),
    )


@pytest.mark.parametrize("path", ["/api/v1/admin/status", "/api/v1/admin/echo"])
async def test_the_right_token_opens_core_and_plugin_admin_routes(
    settings: Settings, path: str
) -> None:
    async with AsyncTestClient(app_for(settings, ADMIN_TOKEN)) as client:
        response = await client.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200, response.text
    if path.endswith("status"):
        body = response.json()
        assert body["ready"] is True
        assert {plugin["name"] for plugin in body["plugins"]} == {"keys", "admin-routes"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Bearer {WRITE_KEY}"},
        {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()},
        {"Authorization": "Basic " + base64.b64encode(f"{ADMIN_TOKEN}:".encode()).decode()},
    ],
    ids=["none", "wrong", "longer", "write-key-bearer", "write-key-basic", "token-as-basic"],
)
async def test_admin_routes_refuse_anything_but_the_bearer_token(
    settings: Settings, headers: dict[str, str]
) -> None:
    async with AsyncTestClient(app_for(settings, ADMIN_TOKEN)) as client:
        response = await client.get("/api/v1/admin/echo", headers=headers)
    assert response.status_code == 401
    assert set(response.json()) == {"code", "message"}
    assert "only for admins" not in response.text


async def test_the_token_in_another_header_is_refused_naming_the_one_that_works(
    settings: Settings,
) -> None:
    # The token travels only as a Bearer token: one documented way, which proxies know to keep
    # out of their logs.
    async with AsyncTestClient(app_for(settings, ADMIN_TOKEN)) as client:
        response = await client.get("/api/v1/admin/echo", headers={"X-Admin-Token": ADMIN_TOKEN})
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["message"]


async def test_admin_api_is_closed_when_no_token_is_configured(settings: Settings) -> None:
    async with AsyncTestClient(app_for(settings, None)) as client:
        response = await client.get(
            "/api/v1/admin/status", headers={"Authorization": "Bearer anything"}
        )
    assert response.status_code == 401
    assert "SIGNALSMITH_ADMIN_TOKEN" in response.json()["message"]


async def test_admin_routes_are_in_the_openapi_schema(settings: Settings) -> None:
    async with AsyncTestClient(app_for(settings, ADMIN_TOKEN)) as client:
        schema = (await client.get("/schema/openapi.json")).json()
    assert "/api/v1/admin/status" in schema["paths"]
    assert "/api/v1/admin/echo" in schema["paths"]


def test_admin_token_is_created_once_and_private(tmp_path: Path) -> None:
    first = ensure_admin_token(tmp_path)
    assert first.startswith("ssadm_") and len(first) > 40
    assert ensure_admin_token(tmp_path) == first
    mode = stat.S_IMODE((tmp_path / "admin-token").stat().st_mode)
    assert mode == 0o600
