"""The write-key admin API in a real collector app (Litestar's test client) on a real Redis."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from signalsmith import Settings
from signalsmith.testing import collector_client, track
from signalsmith_auth_writekey import hash_key

PLUGIN = "auth-writekey"
ADMIN_TOKEN = "ssadm_writekey-tests-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
KEYS = "/api/v1/admin/keys"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with collector_client(
        msgspec.structs.replace(settings, admin_token=ADMIN_TOKEN), entry_points=[PLUGIN]
    ) as client:
        yield client


async def create(client: AsyncTestClient, **body: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    response = await client.post(KEYS, json={"source": "web", **body}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


async def send(client: AsyncTestClient, key: str, count: int = 1) -> Any:  # type: ignore[type-arg]
    body = {"batch": [track() for _ in range(count)]}
    return await client.post("/v1/batch", json=body, auth=(key, ""))


async def test_create_shows_the_key_once_and_it_works(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    created = await create(client, plan="pro")

    key = created["key"]
    assert key.startswith("ss_")
    info = created["info"]
    assert info["prefix"] == key[:10]
    assert (info["source"], info["plan"], info["rate"], info["burst"]) == ("web", "pro", 1000, 5000)
    assert info["state"] == "active" and info["last_used_at"] is None
    response = await send(client, key)
    assert response.status_code == 200, response.text

    listed = await client.get(KEYS, headers=ADMIN)
    shown = await client.get(f"{KEYS}/{key[:10]}", headers=ADMIN)
    for response in (listed, shown):
        assert response.status_code == 200, response.text
        assert key not in response.text
        assert hash_key(key) not in response.text
    [row] = listed.json()
    assert row["prefix"] == key[:10]
    assert shown.json()["last_used_at"] is not None


async def test_list_by_source_and_several_keys_per_source(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    web = await create(client)
    mobile = await create(client)
    server = await create(client, source="backend")

    everything = (await client.get(KEYS, headers=ADMIN)).json()
    web_only = (await client.get(KEYS, params={"source": "web"}, headers=ADMIN)).json()

    assert sorted(row["prefix"] for row in everything) == sorted(
        created["key"][:10] for created in (web, mobile, server)
    )
    assert sorted(row["prefix"] for row in web_only) == sorted(
        created["key"][:10] for created in (web, mobile)
    )


async def test_revoke_refuses_the_key_at_once(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    key = (await create(client))["key"]
    assert (await send(client, key)).status_code == 200

    response = await client.post(f"{KEYS}/{key[:10]}/revoke", headers=ADMIN)

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "revoked"
    assert response.json()["revoked_at"] is not None
    refused = await send(client, key)
    assert refused.status_code == 401
    assert set(refused.json()) == {"code", "message"}
    # Idempotent, and the revocation time does not move.
    again = await client.post(f"{KEYS}/{key[:10]}/revoke", headers=ADMIN)
    assert again.status_code == 200 and again.json() == response.json()


async def test_rotate_keeps_the_old_key_for_the_grace_then_refuses_it(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    old_key = (await create(client))["key"]

    response = await client.post(
        f"{KEYS}/{old_key[:10]}/rotate", json={"grace_seconds": 1}, headers=ADMIN
    )

    assert response.status_code == 201, response.text
    rotated = response.json()
    new_key = rotated["key"]
    assert new_key != old_key and new_key.startswith("ss_")
    assert rotated["info"]["replaces"] == old_key[:10]
    assert rotated["info"]["source"] == "web"
    assert rotated["previous"]["state"] == "expiring"
    assert rotated["previous"]["replaced_by"] == new_key[:10]
    assert (await send(client, old_key)).status_code == 200
    assert (await send(client, new_key)).status_code == 200
    # Rotating again is refused: the new key is the one to rotate.
    conflict = await client.post(f"{KEYS}/{old_key[:10]}/rotate", json={}, headers=ADMIN)
    assert conflict.status_code == 409
    assert new_key[:10] in conflict.json()["message"]

    await asyncio.sleep(1.1)

    assert (await send(client, old_key)).status_code == 401
    assert (await send(client, new_key)).status_code == 200
    shown = (await client.get(f"{KEYS}/{old_key[:10]}", headers=ADMIN)).json()
    assert shown["state"] == "expired"


async def test_plan_change_and_enterprise_limits(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    key = (await create(client))["key"]
    path = f"{KEYS}/{key[:10]}/plan"

    pro = await client.put(path, json={"plan": "pro"}, headers=ADMIN)
    assert pro.status_code == 200, pro.text
    assert (pro.json()["plan"], pro.json()["rate"], pro.json()["burst"]) == ("pro", 1000, 5000)

    missing = await client.put(path, json={"plan": "enterprise"}, headers=ADMIN)
    assert missing.status_code == 400
    assert "rate" in missing.json()["message"] and "burst" in missing.json()["message"]
    too_slow = await client.put(
        path, json={"plan": "enterprise", "rate": 500, "burst": 1000}, headers=ADMIN
    )
    assert too_slow.status_code == 400 and "10000" in too_slow.json()["message"]
    fixed = await client.put(path, json={"plan": "free", "rate": 5}, headers=ADMIN)
    assert fixed.status_code == 400 and "enterprise" in fixed.json()["message"]
    unknown_plan = await client.put(path, json={"plan": "gold"}, headers=ADMIN)
    assert unknown_plan.status_code == 400

    enterprise = await client.put(
        path, json={"plan": "enterprise", "rate": 25_000, "burst": 100_000}, headers=ADMIN
    )
    assert enterprise.status_code == 200, enterprise.text
    assert (enterprise.json()["rate"], enterprise.json()["burst"]) == (25_000, 100_000)
    assert (await send(client, key, 1000)).status_code == 200


async def test_limits_over_http_429_then_413(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    key = (await create(client))["key"]

    accepted = await send(client, key, 500)
    refused = await send(client, key, 50)
    too_big = await send(client, key, 501)

    assert accepted.status_code == 200 and accepted.json()["accepted"] == 500
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-ratelimit-reset"] == "5"
    assert refused.json()["code"] == "rate_limited"
    assert key[:10] in refused.json()["message"] and key not in refused.json()["message"]
    assert too_big.status_code == 413
    assert "retry-after" not in too_big.headers
    assert too_big.json()["code"] == "batch_over_burst"


async def test_unknown_keys_and_bad_requests_say_what_to_do(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    missing = await client.get(f"{KEYS}/ss_nothing", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert "signalsmith keys list" in missing.json()["message"]
    for action in ("revoke", "rotate"):
        response = await client.post(f"{KEYS}/ss_nothing/{action}", headers=ADMIN)
        assert response.status_code == 404, action

    bad_source = await client.post(KEYS, json={"source": "no:colons"}, headers=ADMIN)
    assert bad_source.status_code == 400
    assert set(bad_source.json()) == {"code", "message"}
    extra = await client.post(KEYS, json={"source": "web", "key": "mine"}, headers=ADMIN)
    assert extra.status_code == 400
    negative = await client.post(
        f"{KEYS}/ss_nothing/rotate", json={"grace_seconds": -1}, headers=ADMIN
    )
    assert negative.status_code == 400


async def test_a_whole_key_in_a_url_is_refused(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    key = (await create(client))["key"]

    for response in (
        await client.get(f"{KEYS}/{key}", headers=ADMIN),
        await client.post(f"{KEYS}/{key}/revoke", headers=ADMIN),
    ):
        assert response.status_code == 400
        assert "prefix" in response.json()["message"]
        assert key not in response.text
    [row] = (await client.get(KEYS, headers=ADMIN)).json()
    assert row["state"] == "active"


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@pytest.mark.parametrize(
    "credentials",
    ["none", "wrong-token", "write-key-bearer", "write-key-basic", "write-key-header"],
)
async def test_admin_key_endpoints_refuse_anything_but_the_admin_token(
    client: AsyncTestClient,  # type: ignore[type-arg]
    credentials: str,
) -> None:
    key = (await create(client))["key"]
    headers = {
        "none": {},
        "wrong-token": {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}x"},
        "write-key-bearer": {"Authorization": f"Bearer {key}"},
        "write-key-basic": {"Authorization": basic(key)},
        "write-key-header": {"X-Admin-Token": key},
    }[credentials]

    answers = [
        await client.get(KEYS, headers=headers),
        await client.post(KEYS, json={"source": "web"}, headers=headers),
        await client.get(f"{KEYS}/{key[:10]}", headers=headers),
        await client.post(f"{KEYS}/{key[:10]}/revoke", headers=headers),
        await client.post(f"{KEYS}/{key[:10]}/rotate", headers=headers),
        await client.put(f"{KEYS}/{key[:10]}/plan", json={"plan": "pro"}, headers=headers),
    ]

    for response in answers:
        assert response.status_code == 401, response.text
        assert set(response.json()) == {"code", "message"}
        assert key[:10] not in response.text
    # Nothing changed, and there is still one key.
    [row] = (await client.get(KEYS, headers=ADMIN)).json()
    assert (row["state"], row["plan"]) == ("active", "free")


async def test_openapi_schema_describes_the_key_endpoints(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    schema = (await client.get("/schema/openapi.json")).json()

    paths = schema["paths"]
    assert set(paths[KEYS]) >= {"get", "post"}
    assert "get" in paths[f"{KEYS}/{{prefix}}"]
    assert "post" in paths[f"{KEYS}/{{prefix}}/revoke"]
    assert "post" in paths[f"{KEYS}/{{prefix}}/rotate"]
    assert "put" in paths[f"{KEYS}/{{prefix}}/plan"]
    components = schema["components"]["schemas"]
    for name in ("CreateKey", "CreatedKey", "KeyInfo", "RotateKey", "RotatedKey", "SetPlan"):
        assert name in components, sorted(components)
    assert set(components["KeyInfo"]["properties"]) >= {
        "prefix",
        "source",
        "plan",
        "rate",
        "burst",
        "state",
        "created_at",
        "last_used_at",
    }
    assert "key" not in components["KeyInfo"]["properties"]


async def test_keys_never_reach_the_logs(
    client: AsyncTestClient,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create(client)
    key = created["key"]
    await send(client, key)
    rotated = (
        await client.post(f"{KEYS}/{key[:10]}/rotate", json={"grace_seconds": 0}, headers=ADMIN)
    ).json()
    await client.put(f"{KEYS}/{rotated['key'][:10]}/plan", json={"plan": "pro"}, headers=ADMIN)
    await client.post(f"{KEYS}/{rotated['key'][:10]}/revoke", headers=ADMIN)
    await send(client, key)
    await send(client, rotated["key"])

    logged = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert key[:10] in logged  # the prefixes are logged, so the check below looks at real logs
    for secret in (key, rotated["key"]):
        assert secret not in logged
        assert hash_key(secret) not in logged
