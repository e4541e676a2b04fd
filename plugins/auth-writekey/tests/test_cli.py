"""The `signalsmith keys` commands end to end: click's runner, a real Redis, no server needed."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import click
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from signalsmith import Settings
from signalsmith.testing import build_cli
from signalsmith_auth_writekey import KeyStore, WriteKeySource, hash_key
from signalsmith_auth_writekey.cli import Duration

PLUGIN = "auth-writekey"


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "SIGNALSMITH_REDIS_URL": settings.redis_url or "",
        "SIGNALSMITH_KEY_PREFIX": settings.key_prefix,
        "SIGNALSMITH_DATA_DIR": settings.data_dir,
        "SIGNALSMITH_LOAD_PLUGINS": PLUGIN,
    }


class Keys:
    """Runs `signalsmith keys ...` and reads keys back from Redis the way a collector would."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.cli = build_cli(Settings.from_env(env))
        self.outputs: list[str] = []

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(self.cli, ["keys", *args], env=self.env)
        assert result.exit_code == code, result.output
        self.outputs.append(result.output)
        return result

    def created_key(self, result: Result) -> str:
        # The key is the one indented line of the answer.
        (key,) = [line.strip() for line in result.output.splitlines() if line.startswith("    ")]
        assert key.startswith("ss_")
        return key

    def resolve(self, plaintext: str) -> WriteKeySource | None:
        async def lookup() -> WriteKeySource | None:
            client = aioredis.Redis.from_url(self.settings.redis_url or "")
            try:
                prefix = self.settings.key_prefix
                store = KeyStore(client, lambda *parts: ":".join((prefix, *parts)))
                return await store.lookup(plaintext)
            finally:
                await client.aclose()

        return asyncio.run(lookup())

    def listing(self) -> list[dict[str, object]]:
        return json.loads(self("list", "--json").output)


@pytest.fixture
def keys(settings: Settings, cli_env: dict[str, str]) -> Keys:
    return Keys(settings, cli_env)


def test_create_list_show_through_the_cli(keys: Keys) -> None:
    web = keys.created_key(keys("create", "--source", "web"))
    mobile = keys.created_key(keys("create", "--source", "web", "--plan", "pro"))
    server = keys.created_key(
        keys(
            "create",
            "--source",
            "backend",
            "--plan",
            "enterprise",
            "--rate",
            "20000",
            "--burst",
            "60000",
        )
    )

    for key, source, plan in ((web, "web", "free"), (mobile, "web", "pro")):
        found = keys.resolve(key)
        assert found is not None and (found.id, found.plan) == (source, plan)
    rows = {row["prefix"]: row for row in keys.listing()}
    assert set(rows) == {web[:10], mobile[:10], server[:10]}
    assert (rows[web[:10]]["rate"], rows[web[:10]]["burst"]) == (100, 500)
    assert (rows[mobile[:10]]["rate"], rows[mobile[:10]]["burst"]) == (1000, 5000)
    assert (rows[server[:10]]["rate"], rows[server[:10]]["burst"]) == (20000, 60000)
    assert all(row["state"] == "active" for row in rows.values())
    web_only = json.loads(keys("list", "--source", "web", "--json").output)
    assert {row["prefix"] for row in web_only} == {web[:10], mobile[:10]}

    table = keys("list").output.splitlines()
    assert table[0].split() == [
        "source",
        "prefix",
        "plan",
        "rate",
        "burst",
        "state",
        "created",
        "last_used",
    ]
    # By source, then oldest first.
    assert [line.split()[:3] for line in table[1:]] == [
        ["backend", f"{server[:10]}...", "enterprise"],
        ["web", f"{web[:10]}...", "free"],
        ["web", f"{mobile[:10]}...", "pro"],
    ]

    shown = keys("show", f"{mobile[:10]}...").output
    assert "plan       pro" in shown and "1000 events/s" in shown and "state      active" in shown
    assert keys("show", mobile).output == shown  # the whole key names it too


def test_revoke_through_the_cli(keys: Keys) -> None:
    key = keys.created_key(keys("create", "--source", "web"))

    revoked = keys("revoke", key[:10]).output

    assert f"Revoked write key {key[:10]}..." in revoked
    assert keys.resolve(key) is None
    [row] = keys.listing()
    assert row["state"] == "revoked" and row["revoked_at"] is not None
    # Idempotent; and a revoked key cannot be rotated or re-planned.
    keys("revoke", key[:10])
    assert "revoked" in keys("rotate", key[:10], code=1).output
    assert "revoked" in keys("set-plan", key[:10], "--plan", "pro", code=1).output


def test_rotate_with_grace_through_the_cli(keys: Keys) -> None:
    old = keys.created_key(keys("create", "--source", "web", "--plan", "pro"))

    rotated = keys("rotate", old[:10], "--grace", "1s")

    new = keys.created_key(rotated)
    assert new != old
    assert "accepted until" in rotated.output and "(1 s)" in rotated.output
    old_source, new_source = keys.resolve(old), keys.resolve(new)
    assert old_source is not None and new_source is not None
    assert (new_source.id, new_source.plan) == ("web", "pro")
    rows = {row["prefix"]: row for row in keys.listing()}
    assert rows[old[:10]]["state"] == "expiring"
    assert rows[old[:10]]["replaced_by"] == new[:10]
    assert rows[new[:10]]["replaces"] == old[:10]
    # Rotating it again is refused: the new key is the one to rotate.
    assert new[:10] in keys("rotate", old[:10], code=1).output

    time.sleep(1.1)

    assert keys.resolve(old) is None
    assert keys.resolve(new) is not None
    assert "expired" in keys("show", old[:10]).output
    # The expired key says which key replaced it.
    assert new[:10] in keys("rotate", old[:10], code=1).output


def test_plan_changes_through_the_cli(keys: Keys) -> None:
    key = keys.created_key(keys("create", "--source", "web"))

    assert (
        "plan pro: 1000 events/s, bursts of 5000"
        in keys("set-plan", key[:10], "--plan", "pro").output
    )
    enterprise = keys(
        "set-plan", key[:10], "--plan", "enterprise", "--rate", "50000", "--burst", "250000"
    )
    assert "50000 events/s, bursts of 250000" in enterprise.output
    found = keys.resolve(key)
    assert found is not None and found.plan == "enterprise"
    [row] = keys.listing()
    assert (row["plan"], row["rate"], row["burst"]) == ("enterprise", 50000, 250000)

    missing = keys("set-plan", key[:10], "--plan", "enterprise", code=2).output
    assert "rate" in missing and "burst" in missing
    assert (
        "10000"
        in keys(
            "set-plan", key[:10], "--plan", "enterprise", "--rate", "10", "--burst", "10", code=2
        ).output
    )
    assert (
        "enterprise" in keys("set-plan", key[:10], "--plan", "free", "--rate", "5", code=2).output
    )
    assert keys("set-plan", key[:10], "--plan", "gold", code=2)
    [row] = keys.listing()
    assert row["plan"] == "enterprise"


def test_unknown_keys_and_bad_input_say_what_to_do(keys: Keys) -> None:
    for command in (["show"], ["revoke"], ["rotate"], ["set-plan", "--plan", "pro"]):
        output = keys(*command[:1], "ss_nothing", *command[1:], code=1).output
        assert "signalsmith keys list" in output, command
    assert "--source" in keys("create", "--source", "not:ok", code=2).output
    assert "duration" in keys("rotate", "ss_nothing", "--grace", "soon", code=2).output
    assert keys("list").output.strip() == (
        "No write keys yet; create one with `signalsmith keys create --source NAME`."
    )


def test_keys_are_shown_once_and_never_logged(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = keys.created_key(keys("create", "--source", "web"))
    new = keys.created_key(keys("rotate", key[:10], "--grace", "0"))
    keys("set-plan", new[:10], "--plan", "pro")
    keys("list")
    keys("list", "--json")
    keys("show", key[:10])
    keys("show", new[:10], "--json")
    keys("revoke", new[:10])

    create_output, rotate_output, *others = keys.outputs
    assert key in create_output and new in rotate_output
    for output in others:
        for secret in (key, new):
            assert secret not in output
            assert hash_key(secret) not in output
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert key[:10] in logged  # the prefix is what the logs show
    for secret in (key, new):
        assert secret not in logged and hash_key(secret) not in logged


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800)],
)
def test_grace_durations(text: str, seconds: int) -> None:
    assert Duration().convert(text, None, None) == seconds


def test_a_bad_duration_is_refused() -> None:
    with pytest.raises(click.BadParameter, match="90s, 15m, 24h or 7d"):
        Duration().convert("1 week", None, None)
