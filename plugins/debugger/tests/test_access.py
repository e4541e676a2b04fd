"""Who sees what: the page holds no data, the API needs a token, a debugger token sees only its
sources and opens nothing else of the admin API, tokens are kept hashed, revoked and expire."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from signalsmith import Settings
from signalsmith.testing import build_cli, track


async def create_token(client: Any, kit: Any, **body: Any) -> str:
    response = await client.post("/api/v1/admin/debugger/tokens", json=body, headers=kit.ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["token"]


async def test_the_page_needs_no_token_and_holds_no_data(client: Any) -> None:
    for path in ("/debugger", "/debugger/"):
        page = await client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<base href="/debugger/">' in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    script = await client.get("/debugger/static/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    missing = await client.get("/debugger/static/../../config.py")
    assert missing.status_code == 404
    unknown = await client.get("/debugger/static/other.js")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "code": "not_found",
        "message": "no file 'other.js' in the debugger's page",
    }


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic d2stZGVidWdnZXItd2ViOg=="},  # a write key is not a token
        {"Authorization": "Bearer wk-debugger-web"},
    ],
)
async def test_the_api_needs_a_token(client: Any, headers: dict[str, str]) -> None:
    for path in ("whoami", "sources", "live", "trace/m-1", "status"):
        response = await client.get(f"/debugger/api/{path}", headers=headers)
        assert response.status_code == 401, path
        assert response.json()["code"] == "unauthorized"


async def test_a_debugger_token_sees_only_its_sources(client: Any, kit: Any) -> None:
    token = await create_token(client, kit, sources=["web"], name="team-web")
    scoped = kit.bearer(token)
    web, app = track("Signed Up", userId="ada"), track("Signed Up", userId="bob")
    refused = track("Signed Up", userId="eve")
    await client.post("/v1/track", json=web, headers=kit.basic(kit.WEB_KEY))
    await client.post("/v1/track", json=app, headers=kit.basic(kit.APP_KEY))
    await client.post("/v1/track", json=refused, headers=kit.basic("no-such-key"))
    for event in (web, app, refused):  # the admin token sees all three
        await kit.trace_of(client, event["messageId"])

    who = (await client.get("/debugger/api/whoami", headers=scoped)).json()
    assert (who["name"], who["sources"]) == ("team-web", ["web"])
    listed = (await client.get("/debugger/api/sources", headers=scoped)).json()
    assert [source["id"] for source in listed] == ["web"]
    everything = (await client.get("/debugger/api/sources", headers=kit.ADMIN)).json()
    assert [source["id"] for source in everything] == ["-", "app", "web"]
    seen = await client.get(f"/debugger/api/trace/{web['messageId']}", headers=scoped)
    assert seen.status_code == 200
    for other in (app, refused):
        hidden = await client.get(f"/debugger/api/trace/{other['messageId']}", headers=scoped)
        assert hidden.status_code == 404  # as if it had never been sent
    forbidden = await client.get("/debugger/api/live?source=app", headers=scoped)
    assert forbidden.status_code == 403
    assert forbidden.json()["message"] == "this token does not see source 'app'"
    viewers = await client.get("/debugger/api/viewers", headers=scoped)
    assert viewers.status_code == 403


async def test_a_debugger_token_opens_nothing_else_of_the_admin_api(client: Any, kit: Any) -> None:
    scoped = kit.bearer(await create_token(client, kit, sources=["web"]))
    for method, path in (
        ("GET", "/api/v1/admin/status"),
        ("GET", "/api/v1/admin/trace/m-1"),
        ("GET", "/api/v1/admin/debugger/tokens"),
        ("POST", "/api/v1/admin/debugger/tokens"),
        ("GET", "/api/v1/admin/config"),
    ):
        response = await client.request(method, path, headers=scoped, json={"sources": ["app"]})
        assert response.status_code == 401, path


async def test_tokens_are_kept_hashed_listed_and_revoked(
    client: Any, kit: Any, redis: aioredis.Redis, admin_settings: Settings
) -> None:
    created = (
        await client.post(
            "/api/v1/admin/debugger/tokens",
            json={"sources": ["web", "app", "web"], "name": "support"},
            headers=kit.ADMIN,
        )
    ).json()
    token, info = created["token"], created["info"]
    assert token.startswith(f"ssdbg_{info['id']}_")
    assert info["sources"] == ["app", "web"]
    stored = await redis.hgetall(f"{admin_settings.key_prefix}:debugger:tokens")
    assert list(stored) == [hashlib.sha256(token.encode()).hexdigest().encode()]
    assert token.encode() not in b"".join(stored.values())
    listed = (await client.get("/api/v1/admin/debugger/tokens", headers=kit.ADMIN)).json()
    assert [(t["id"], t["name"]) for t in listed] == [(info["id"], "support")]
    assert "token" not in json.dumps(listed).replace('"tokens"', "")

    revoked = await client.delete(f"/api/v1/admin/debugger/tokens/{info['id']}", headers=kit.ADMIN)
    assert revoked.status_code == 200
    refused = await client.get("/debugger/api/whoami", headers=kit.bearer(token))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["message"]
    again = await client.delete(f"/api/v1/admin/debugger/tokens/{info['id']}", headers=kit.ADMIN)
    assert again.status_code == 404


async def test_a_token_expires(client: Any, kit: Any) -> None:
    token = await create_token(client, kit, sources=["web"], expiresInSeconds=1)

    async def whoami() -> Any:
        return await client.get("/debugger/api/whoami", headers=kit.bearer(token))

    assert (await whoami()).status_code == 200
    expired = await kit.eventually(whoami, lambda r: r.status_code == 401, "expiry")
    assert "expired at" in expired.json()["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sources": []}, "at least one source"),
        ({"sources": ["-"]}, "for the admin token only"),
        ({"sources": ["web"], "expiresInSeconds": 0}, "above 0"),
        ({"sources": ["web"], "scope": "all"}, "scope"),
    ],
)
async def test_a_bad_token_request_says_what_is_wrong(
    client: Any, kit: Any, body: dict[str, Any], message: str
) -> None:
    response = await client.post("/api/v1/admin/debugger/tokens", json=body, headers=kit.ADMIN)
    assert response.status_code == 400
    assert message in response.json()["message"]


def test_the_token_commands(settings: Settings) -> None:
    cli = build_cli(settings)
    runner = CliRunner()
    created = runner.invoke(
        cli,
        [
            "debugger",
            "token",
            "create",
            "--source",
            "web",
            "--name",
            "web team",
            "--expires-in",
            "30d",
        ],
    )
    assert created.exit_code == 0, created.output
    lines = created.stdout.splitlines()
    token = lines[-1]
    assert token.startswith("ssdbg_")
    assert "Shown once" in created.stdout
    listed = runner.invoke(cli, ["debugger", "token", "list", "--json"])
    [info] = json.loads(listed.stdout)
    assert (info["name"], info["sources"]) == ("web team", ["web"])
    assert info["expiresAt"] is not None
    assert token not in listed.stdout
    table = runner.invoke(cli, ["debugger", "token", "list"])
    assert "web team" in table.stdout
    revoked = runner.invoke(cli, ["debugger", "token", "revoke", info["id"]])
    assert revoked.exit_code == 0
    assert f"revoked debugger token {info['id']}" in revoked.stdout
    missing = runner.invoke(cli, ["debugger", "token", "revoke", info["id"]])
    assert missing.exit_code == 1
    assert "no debugger token" in missing.stderr
    no_source = runner.invoke(cli, ["debugger", "token", "create"])
    assert no_source.exit_code == 2
