"""The write-key store, the authenticate hook and the `keys` commands, against a real Redis."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from signalsmith import Credentials, Runtime, Settings, Source
from signalsmith.testing import build_cli, plugin_infos, plugin_manager, runtime_for
from signalsmith_auth_writekey import (
    InvalidSourceName,
    KeyStore,
    ensure_dev_key,
    hash_key,
    store_for,
)

PLUGIN = "auth-writekey"


@pytest.fixture
async def runtime(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[Runtime]:
    # Only this plugin, loaded through its entry point: proves the wiring, and keeps plugins
    # other people install in the same environment out of these tests.
    async with runtime_for(
        settings, role="collector", entry_points=[PLUGIN], redis=redis
    ) as runtime:
        yield runtime


@pytest.fixture
def store(runtime: Runtime) -> KeyStore:
    return store_for(runtime)


class Clock:
    """A clock the test moves by hand, so cache expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def everything_under(redis: aioredis.Redis, prefix: str) -> list[bytes]:
    """Every key name under ``prefix`` and every value stored in those keys."""
    found: list[bytes] = []
    async for name in redis.scan_iter(match=f"{prefix}:*", count=1000):
        found.append(name)
        kind = (await redis.type(name)).decode()
        if kind == "hash":
            for field, value in (await redis.hgetall(name)).items():
                found += [field, value]
        elif kind == "set":
            found += list(await redis.smembers(name))
        elif kind == "string":
            found.append(await redis.get(name))
        else:
            pytest.fail(f"unexpected {kind} key {name!r}: extend this scan to read it")
    return found


def test_plugin_is_registered_through_its_entry_point() -> None:
    infos = {info.name: info for info in plugin_infos(plugin_manager(entry_points=[PLUGIN]))}
    assert infos[PLUGIN].hooks == [
        "admit_events",
        "authenticate",
        "embedded_defaults",
        "register_admin_routes",
        "register_commands",
        "shutdown",
        "startup",
    ]


async def test_created_key_resolves_to_its_source(store: KeyStore) -> None:
    plaintext, record = await store.create("web")

    assert plaintext.startswith("ss_") and len(plaintext) > 30
    assert record.source == "web"
    assert record.prefix == plaintext[:10]
    assert record.state == "active"
    assert (record.plan, record.rate, record.burst) == ("free", 100, 500)
    source = await store.lookup(plaintext)
    assert source is not None
    assert (source.id, source.name, source.key_prefix, source.plan) == (
        "web",
        "web",
        plaintext[:10],
        "free",
    )
    assert isinstance(source, Source)
    # The hash rides along for the admit stage, but stays out of reprs (and so out of logs).
    assert source.key_hash == hash_key(plaintext)
    assert hash_key(plaintext) not in repr(source)


async def test_only_the_hash_is_stored(
    store: KeyStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    plaintext, _record = await store.create("web")

    stored = await everything_under(redis, key_prefix)
    assert not [item for item in stored if plaintext.encode() in item]
    record = await redis.hgetall(f"{key_prefix}:keys:{hash_key(plaintext)}")
    assert record[b"source"] == b"web"
    assert await redis.smembers(f"{key_prefix}:sources:web:keys") == {hash_key(plaintext).encode()}
    assert await redis.smembers(f"{key_prefix}:source-names") == {b"web"}
    assert await redis.hgetall(f"{key_prefix}:key-prefixes") == {
        plaintext[:10].encode(): hash_key(plaintext).encode()
    }


async def test_list_shows_prefixes_never_keys_or_hashes(store: KeyStore) -> None:
    web_1, _ = await store.create("web")
    ios, _ = await store.create("ios-app")
    web_2, _ = await store.create("web")

    records = await store.list()

    assert [(r.source, r.prefix) for r in records] == [
        ("ios-app", ios[:10]),
        ("web", web_1[:10]),
        ("web", web_2[:10]),
    ]
    listed = repr(records)
    for plaintext in (web_1, ios, web_2):
        assert plaintext not in listed
        assert hash_key(plaintext) not in listed


async def test_list_is_empty_without_keys(store: KeyStore) -> None:
    assert await store.list() == []


async def test_unknown_keys_resolve_to_nothing(store: KeyStore) -> None:
    await store.create("web")

    assert await store.lookup("ss_not-a-key-that-was-ever-created") is None
    assert await store.lookup("") is None
    assert await store.lookup("ss_" + "x" * 1000) is None
    assert await store.authenticate(["", "nope", "ss_" + "x" * 1000]) is None


async def test_source_names_that_would_break_key_names_are_refused(store: KeyStore) -> None:
    for bad in ("", "a:keys", "has space", "-leading", "x" * 65):
        with pytest.raises(InvalidSourceName, match="letters, digits"):
            await store.create(bad)
    assert await store.list() == []


async def test_authenticate_hook_returns_the_first_known_keys_source(
    runtime: Runtime, store: KeyStore
) -> None:
    web, _ = await store.create("web")
    ios, _ = await store.create("ios")

    async def authenticate(*keys: str) -> Source | None:
        return await runtime.hooks.authenticate(Credentials(write_keys=keys), runtime)

    found = await authenticate("unknown-1", ios, web)
    assert found is not None and found.name == "ios" and found.key_prefix == ios[:10]
    found = await authenticate(web, ios)
    assert found is not None and found.name == "web"
    assert await authenticate("unknown-1", "unknown-2") is None
    # Asked again, now from the cache: the same answers.
    found = await authenticate("unknown-1", ios, web)
    assert found is not None and found.name == "ios"


async def test_cached_answers_expire_so_changes_in_redis_are_seen(
    runtime: Runtime, redis: aioredis.Redis
) -> None:
    clock = Clock()
    # Not subscribed to the changes channel: answers are kept for unsubscribed_ttl only.
    store = KeyStore(
        runtime.redis, runtime.key, unsubscribed_ttl=1.0, negative_ttl=0.25, clock=clock
    )
    plaintext, _ = await store.create("web")
    assert (await store.authenticate([plaintext])) is not None

    # Removing the record stands in for revocation: honoured once the 1 s entry expires.
    await redis.delete(runtime.key("keys", hash_key(plaintext)))
    assert (await store.authenticate([plaintext])) is not None
    clock.now += 1.01
    assert await store.authenticate([plaintext]) is None

    # An unknown key is remembered briefly; a record appearing for it is seen soon after.
    candidate = "ss_imported-later"
    assert await store.authenticate([candidate]) is None
    await redis.hset(
        runtime.key("keys", hash_key(candidate)),
        mapping={"source": "web", "prefix": candidate[:10], "created_at": "2026-01-01T00:00:00Z"},
    )
    assert await store.authenticate([candidate]) is None
    clock.now += 0.26
    found = await store.authenticate([candidate])
    assert found is not None and found.name == "web"


async def test_keys_in_another_state_do_not_resolve(
    store: KeyStore, runtime: Runtime, redis: aioredis.Redis
) -> None:
    plaintext, _ = await store.create("web")
    await redis.hset(runtime.key("keys", hash_key(plaintext)), "state", "revoked")

    assert await store.lookup(plaintext) is None
    assert await KeyStore.for_runtime(runtime).authenticate([plaintext]) is None


async def test_cache_stays_bounded(runtime: Runtime) -> None:
    store = KeyStore(runtime.redis, runtime.key, max_cached=50)
    for start in range(0, 200, 20):
        await store.authenticate([f"ss_spray-{n}" for n in range(start, start + 20)])
    assert len(store._cache) <= 50


async def test_dev_key_is_stable_and_private(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "dev-write-key"

    first = await ensure_dev_key(runtime, path)
    second = await ensure_dev_key(runtime, path)

    assert first == second
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    source = await store_for(runtime).lookup(first)
    assert source is not None and source.name == "dev"
    assert [r.source for r in await store_for(runtime).list()] == ["dev"]


async def test_dev_key_is_recreated_when_the_file_holds_an_unknown_key(
    runtime: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "dev-write-key"
    path.write_text("ss_from-a-redis-that-was-wiped\n")
    path.chmod(0o644)

    key = await ensure_dev_key(runtime, path)

    assert key != "ss_from-a-redis-that-was-wiped"
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await store_for(runtime).lookup(key) is not None
    assert await ensure_dev_key(runtime, path) == key


# --- the CLI, through click's runner and a real Redis (sync tests: the commands run their own
# event loop) ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "SIGNALSMITH_REDIS_URL": settings.redis_url or "",
        "SIGNALSMITH_KEY_PREFIX": settings.key_prefix,
        "SIGNALSMITH_DATA_DIR": settings.data_dir,
        "SIGNALSMITH_LOAD_PLUGINS": PLUGIN,
    }


def resolve_now(settings: Settings, plaintext: str) -> Source | None:
    async def lookup() -> Source | None:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            key_prefix = settings.key_prefix
            store = KeyStore(client, lambda *parts: ":".join((key_prefix, *parts)))
            return await store.lookup(plaintext)
        finally:
            await client.aclose()

    return asyncio.run(lookup())


def test_cli_creates_a_key_once_and_lists_only_its_prefix(
    settings: Settings, cli_env: dict[str, str]
) -> None:
    runner = CliRunner()
    cli = build_cli(Settings.from_env(cli_env))

    created = runner.invoke(cli, ["keys", "create", "--source", "web"], env=cli_env)
    assert created.exit_code == 0, created.output
    (plaintext,) = [line.strip() for line in created.output.splitlines() if "ss_" in line]
    assert "cannot be shown again" in created.output
    source = resolve_now(settings, plaintext)
    assert source is not None and source.name == "web"

    listed = runner.invoke(cli, ["keys", "list"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split() == [
        "source",
        "prefix",
        "plan",
        "rate",
        "burst",
        "state",
        "created",
        "last_used",
    ]
    assert row.split()[:6] == ["web", f"{plaintext[:10]}...", "free", "100/s", "500", "active"]
    assert plaintext not in listed.output
    assert hash_key(plaintext) not in listed.output


def test_cli_list_without_keys_says_how_to_create_one(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        build_cli(Settings.from_env(cli_env)), ["keys", "list"], env=cli_env
    )
    assert result.exit_code == 0, result.output
    assert "signalsmith keys create --source NAME" in result.output


def test_cli_refuses_a_bad_source_name_with_the_fix(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        build_cli(Settings.from_env(cli_env)),
        ["keys", "create", "--source", "not:ok"],
        env=cli_env,
    )
    assert result.exit_code == 2
    assert "--source" in result.output and "letters, digits" in result.output
