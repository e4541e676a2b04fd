"""Per-key rate limits, key states on the request path, and cache invalidation, on a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from signalsmith import Refusal, Runtime, Settings, Source
from signalsmith.testing import RedisServerProcess, runtime_for
from signalsmith_auth_writekey import KeyStore, WriteKeySource, hash_key, store_for
from signalsmith_auth_writekey.invalidation import InvalidationListener
from signalsmith_auth_writekey.limits import refusal_for
from signalsmith_auth_writekey.plugin import LISTENER_KEY

PLUGIN = "auth-writekey"


@pytest.fixture
async def runtime(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[Runtime]:
    async with runtime_for(settings, role="cli", entry_points=[PLUGIN], redis=redis) as runtime:
        yield runtime


@pytest.fixture
def store(runtime: Runtime) -> KeyStore:
    return store_for(runtime)


async def new_key(store: KeyStore, **options: object) -> tuple[str, WriteKeySource]:
    plaintext, _record = await store.create("web", **options)  # type: ignore[arg-type]
    source = await store.authenticate([plaintext])
    assert source is not None
    return plaintext, source


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.01)


# --- the limiter ----------------------------------------------------------------------------


async def test_a_quiet_free_key_takes_exactly_its_burst(store: KeyStore) -> None:
    _key, source = await new_key(store)

    assert (await store.admit(source, 500)).outcome == "admitted"
    refused = await store.admit(source, 50)

    assert refused.outcome == "limited"
    # 50 events at 100/s are 0.5 s away: Retry-After rounds up to a whole second.
    assert refused.retry_after == 1
    # The whole burst is back 5 s (500 events at 100/s) after it was spent.
    assert refused.reset_after == 5
    assert (refused.rate, refused.burst) == (100, 500)


async def test_one_event_at_a_time_the_burst_is_exact(store: KeyStore) -> None:
    _key, source = await new_key(store)

    started = time.monotonic()
    taken = 0
    while (await store.admit(source, 1)).outcome == "admitted":
        taken += 1
    elapsed = time.monotonic() - started

    # Never fewer than the burst; more only by what 100/s gave back while the loop ran.
    assert 500 <= taken <= 500 + 100 * elapsed + 1, (taken, elapsed)


async def test_the_burst_is_exact_in_pieces_too(store: KeyStore) -> None:
    _key, source = await new_key(store)

    outcomes = [(await store.admit(source, 100)).outcome for _ in range(5)]
    assert outcomes == ["admitted"] * 5
    assert (await store.admit(source, 50)).outcome == "limited"


async def test_the_reset_never_exceeds_a_full_bucket(
    store: KeyStore, runtime: Runtime, redis: aioredis.Redis
) -> None:
    plaintext, source = await new_key(store)
    # The admit check tolerates a hundredth of an event's interval for rounding, so a bucket
    # emptied to the limit can hold its theoretical arrival time up to 100 µs more than the
    # whole burst (5 s here) ahead; a refusal within those 100 µs said "reset in 6 s". The state
    # is exaggerated to 0.6 s past the burst so that no timing is needed to see the bound.
    seconds, micros = await redis.time()
    now_us = int(seconds) * 1_000_000 + int(micros)
    await redis.hset(runtime.key("keys", hash_key(plaintext)), "tat", now_us + 5_600_000)

    refused = await store.admit(source, 10)

    assert refused.outcome == "limited"
    assert refused.reset_after == 5


async def test_retry_after_is_how_long_until_the_request_fits(store: KeyStore) -> None:
    _key, source = await new_key(store)
    assert (await store.admit(source, 500)).outcome == "admitted"

    # 300 events at 100/s fit in 3 s (a little less, as time has passed): 3 whole seconds.
    decision = await store.admit(source, 300)
    assert (decision.outcome, decision.retry_after, decision.reset_after) == ("limited", 3, 5)
    # A refused request takes nothing: the same answer again.
    assert (await store.admit(source, 300)).retry_after == 3


async def test_the_bucket_refills_at_the_plans_rate(store: KeyStore) -> None:
    _key, source = await new_key(store)
    assert (await store.admit(source, 500)).outcome == "admitted"
    spent = time.monotonic()

    await asyncio.sleep(0.3)
    taken = 0
    while (await store.admit(source, 1)).outcome == "admitted":
        taken += 1
    elapsed = time.monotonic() - spent

    # 100 events/s: about 30 came back; never more than the time allows.
    assert 25 <= taken <= 100 * elapsed + 1, (taken, elapsed)


async def test_a_request_larger_than_the_burst_is_413_and_takes_nothing(
    store: KeyStore,
) -> None:
    _key, source = await new_key(store)

    decision = await store.admit(source, 501)
    assert decision.outcome == "over_burst"
    refusal = refusal_for(decision, source)
    assert refusal is not None
    assert (refusal.status, refusal.reason) == (413, "batch_over_burst")
    assert "at most 500 events" in refusal.message
    assert source.key_prefix in refusal.message

    assert (await store.admit(source, 500)).outcome == "admitted"


async def test_rate_limit_refusal_names_the_key_and_the_fix(store: KeyStore) -> None:
    plaintext, source = await new_key(store)
    await store.admit(source, 500)

    refusal = refusal_for(await store.admit(source, 50), source)

    assert isinstance(refusal, Refusal)
    assert (refusal.status, refusal.reason) == (429, "rate_limited")
    assert (refusal.retry_after, refusal.reset_after) == (1, 5)
    assert f"write key {plaintext[:10]}..." in refusal.message
    assert "100 events/s" in refusal.message and "set-plan" in refusal.message
    assert plaintext not in refusal.message


async def test_a_plan_change_applies_to_the_next_request_with_a_full_burst(
    store: KeyStore,
) -> None:
    plaintext, source = await new_key(store)
    await store.admit(source, 500)
    assert (await store.admit(source, 50)).outcome == "limited"

    await store.set_plan(plaintext[:10], "pro")

    assert (await store.admit(source, 5000)).outcome == "admitted"
    decision = await store.admit(source, 500)
    assert (decision.outcome, decision.rate, decision.burst) == ("limited", 1000, 5000)
    refreshed = await store.authenticate([plaintext])
    assert refreshed is not None and refreshed.plan == "pro"


async def test_enterprise_keys_carry_their_own_rate_and_burst(store: KeyStore) -> None:
    _key, source = await new_key(store, plan="enterprise", rate=20_000, burst=30_000)

    assert source.plan == "enterprise"
    assert (await store.admit(source, 2500)).outcome == "admitted"
    assert (await store.admit(source, 27_500)).outcome == "admitted"
    # At 20,000/s one event comes back every 50 µs, quicker than a round trip: ask for 1,000.
    decision = await store.admit(source, 1000)
    assert (decision.outcome, decision.rate, decision.burst) == ("limited", 20_000, 30_000)


async def test_each_key_has_its_own_bucket(store: KeyStore) -> None:
    _web, web = await new_key(store)
    _other, other = await new_key(store)

    assert (await store.admit(web, 500)).outcome == "admitted"
    assert (await store.admit(web, 50)).outcome == "limited"
    assert (await store.admit(other, 500)).outcome == "admitted"


async def test_last_used_is_written_by_the_same_script(store: KeyStore) -> None:
    plaintext, source = await new_key(store)
    assert (await store.info(plaintext[:10])).last_used_at is None

    before = time.time()
    await store.admit(source, 1)

    used = (await store.info(plaintext[:10])).last_used_at
    assert used is not None and before - 1 <= used.timestamp() <= time.time()


async def test_keys_from_version_0_1_get_the_free_limits(
    store: KeyStore, runtime: Runtime, redis: aioredis.Redis
) -> None:
    plaintext = "ss_" + uuid.uuid4().hex
    digest = hash_key(plaintext)
    await redis.hset(
        runtime.key("keys", digest),
        mapping={"source": "web", "prefix": plaintext[:10], "created_at": "2026-01-01T00:00:00Z"},
    )
    await redis.hset(runtime.key("keys", digest), mapping={"state": "active", "plan": "free"})
    await redis.sadd(runtime.key("sources", "web", "keys"), digest)
    await redis.sadd(runtime.key("source-names"), "web")
    source = await store.authenticate([plaintext])
    assert source is not None

    assert (await store.admit(source, 500)).outcome == "admitted"
    assert (await store.admit(source, 50)).outcome == "limited"
    # Found by its prefix although it predates the prefix index.
    assert (await store.info(plaintext[:10])).rate == 100


# --- key states on the request path --------------------------------------------------------


async def test_a_revoked_key_is_refused_even_by_a_process_that_has_it_cached(
    runtime: Runtime, redis: aioredis.Redis
) -> None:
    # Two stores, like two collector processes; neither follows the changes channel here.
    first = KeyStore.for_runtime(runtime)
    second = KeyStore.for_runtime(runtime)
    plaintext, _ = await first.create("web")
    cached = await second.authenticate([plaintext])
    assert cached is not None

    await first.revoke(plaintext[:10])

    # The cache still answers, but the admit script reads the key's state itself.
    assert await second.authenticate([plaintext]) is cached
    decision = await second.admit(cached, 1)
    assert decision.outcome == "revoked"
    refusal = refusal_for(decision, cached)
    assert refusal is not None
    assert (refusal.status, refusal.reason) == (401, "write_key_revoked")
    assert "signalsmith keys create --source web" in refusal.message
    # ... and the process forgets the key at once.
    assert await second.authenticate([plaintext]) is None


async def test_a_deleted_key_is_refused_by_the_admit_script(
    runtime: Runtime, redis: aioredis.Redis, store: KeyStore
) -> None:
    plaintext, source = await new_key(store)
    await redis.delete(runtime.key("keys", hash_key(plaintext)))

    decision = await store.admit(source, 1)
    refusal = refusal_for(decision, source)
    assert refusal is not None and (refusal.status, refusal.reason) == (401, "invalid_write_key")


async def test_a_rotated_key_works_for_its_grace_then_is_refused(store: KeyStore) -> None:
    old_key, old_source = await new_key(store)
    new_key_text, new_record, old_record = await store.rotate(old_key[:10], grace_seconds=1)

    assert new_record.source == "web" and new_record.replaces == old_key[:10]
    assert old_record.replaced_by == new_key_text[:10]
    assert (await store.admit(old_source, 1)).outcome == "admitted"
    new_source = await store.authenticate([new_key_text])
    assert new_source is not None and (await store.admit(new_source, 1)).outcome == "admitted"

    await asyncio.sleep(1.1)

    decision = await store.admit(old_source, 1)
    assert decision.outcome == "expired"
    refusal = refusal_for(decision, old_source)
    assert refusal is not None and (refusal.status, refusal.reason) == (401, "write_key_expired")
    assert await store.authenticate([old_key]) is None
    assert await store.lookup(old_key) is None
    assert (await store.admit(new_source, 1)).outcome == "admitted"


async def test_admit_hook_limits_only_write_key_sources(runtime: Runtime, store: KeyStore) -> None:
    _key, source = await new_key(store)
    await store.admit(source, 500)

    foreign = Source(id="web", name="web", key_prefix=source.key_prefix)
    hooks = runtime.hooks
    assert await hooks.admit_events(foreign, 50, "/v1/batch", runtime) is None
    refusal = await hooks.admit_events(source, 50, "/v1/batch", runtime)
    assert isinstance(refusal, Refusal) and refusal.status == 429


# --- invalidation across processes -----------------------------------------------------------


@pytest.fixture
async def collector_runtime(settings: Settings, redis_url: str) -> AsyncIterator[Runtime]:
    """A runtime with the collector role: the plugin follows the changes channel."""
    async with runtime_for(settings, role="collector", entry_points=[PLUGIN]) as runtime:
        store = store_for(runtime)
        await wait_until(lambda: store.subscribed)
        yield runtime


async def test_changes_reach_a_collectors_cache_at_once(
    collector_runtime: Runtime, runtime: Runtime
) -> None:
    cached_store = store_for(collector_runtime)
    admin_store = KeyStore.for_runtime(runtime)  # another process, such as the CLI
    plaintext, _ = await admin_store.create("web")
    source = await cached_store.authenticate([plaintext])
    assert source is not None and source.plan == "free"
    # Followed channel: the answer would be kept for a minute.
    assert cached_store.ttl >= 60

    await admin_store.set_plan(plaintext[:10], "pro")
    await wait_until(lambda: hash_key(plaintext) not in cached_store._cache, within=1.0)
    source = await cached_store.authenticate([plaintext])
    assert source is not None and source.plan == "pro"

    await admin_store.revoke(plaintext[:10])
    await wait_until(lambda: hash_key(plaintext) not in cached_store._cache, within=1.0)
    assert await cached_store.authenticate([plaintext]) is None


async def test_every_change_publishes_the_keys_hash(
    runtime: Runtime, redis: aioredis.Redis, store: KeyStore
) -> None:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(store.changes_channel)
    try:

        async def published() -> list[str]:
            seen: list[str] = []
            while (message := await pubsub.get_message(timeout=0.2)) is not None:
                seen.append(message["data"].decode())
            return seen

        await published()
        # Creating publishes too: a collector that was just asked about this key remembers
        # "unknown" for it.
        plaintext, _ = await store.create("web")
        digest = hash_key(plaintext)
        assert await published() == [digest]
        await store.set_plan(plaintext[:10], "pro")
        assert await published() == [digest]
        new_key_text, _, _ = await store.rotate(plaintext[:10], grace_seconds=60)
        assert await published() == [hash_key(new_key_text), digest]
        await store.revoke(plaintext[:10])
        assert await published() == [digest]
        # Revoking again changes nothing and tells nobody.
        await store.revoke(plaintext[:10])
        assert await published() == []
        assert plaintext not in repr(await store.list())
    finally:
        await pubsub.aclose()


async def test_the_listener_resubscribes_after_its_connection_is_killed(
    settings: Settings, redis_url: str, redis: aioredis.Redis, runtime: Runtime
) -> None:
    name = f"sstest-listener-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(redis_url, client_name=name)
    store = KeyStore(client, runtime.key)
    listener = InvalidationListener(store)
    listener.start()
    try:
        await wait_until(lambda: listener.subscriptions == 1)
        plaintext, _ = await KeyStore.for_runtime(runtime).create("web")
        assert await store.authenticate([plaintext]) is not None

        killed = 0
        for entry in await redis.client_list():
            if entry.get("name") == name and entry.get("sub") not in (None, "0"):
                await redis.client_kill_filter(_id=entry["id"])
                killed += 1
        assert killed == 1

        # Whatever was cached while the channel was down is dropped when it is back.
        await wait_until(lambda: listener.subscriptions >= 2)
        assert store.subscribed
        assert store._cache == {}
        assert await store.authenticate([plaintext]) is not None
        await KeyStore.for_runtime(runtime).revoke(plaintext[:10])
        await wait_until(lambda: hash_key(plaintext) not in store._cache, within=1.0)
        assert await store.authenticate([plaintext]) is None
    finally:
        await listener.stop()
        await client.aclose()
    assert not store.subscribed


async def test_collector_runtime_starts_and_stops_the_listener(
    collector_runtime: Runtime,
) -> None:
    listener = collector_runtime.state[LISTENER_KEY]
    assert isinstance(listener, InvalidationListener)
    assert listener.subscriptions >= 1


# --- concurrent requests share round trips ----------------------------------------------------


async def test_concurrent_checks_are_exact_too(store: KeyStore) -> None:
    _key, source = await new_key(store)

    first = await asyncio.gather(*(store.admit(source, 10) for _ in range(50)))
    second = await asyncio.gather(*(store.admit(source, 10) for _ in range(10)))

    assert [d.outcome for d in first] == ["admitted"] * 50
    assert [d.outcome for d in second] == ["limited"] * 10
    assert {(d.retry_after, d.reset_after) for d in second} == {(1, 5)}


async def test_a_redis_that_lost_the_script_gets_it_again(
    redis_server_factory: Callable[..., RedisServerProcess],
) -> None:
    # A private server: SCRIPT FLUSH on the shared one would pull scripts from under others.
    server = redis_server_factory(appendonly=False)
    client = aioredis.Redis.from_url(server.url)
    try:
        store = KeyStore(client, lambda *parts: ":".join(("lost-script", *parts)))
        _key, source = await new_key(store)
        assert (await store.admit(source, 1)).outcome == "admitted"

        await client.script_flush()
        batch = await asyncio.gather(*(store.admit(source, 1) for _ in range(20)))
        assert [d.outcome for d in batch] == ["admitted"] * 20
        await client.script_flush()
        assert (await store.admit(source, 1)).outcome == "admitted"
    finally:
        await client.aclose()


async def test_redis_errors_reach_every_waiting_request(
    redis_server_factory: Callable[..., RedisServerProcess],
) -> None:
    server = redis_server_factory(appendonly=False)
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1)
    try:
        store = KeyStore(client, lambda *parts: ":".join(("gone", *parts)))
        _key, source = await new_key(store)
        server.stop()

        answers = await asyncio.gather(
            *(store.admit(source, 1) for _ in range(5)), return_exceptions=True
        )
        # The core answers these 503 with Retry-After: the client tries again later.
        assert all(isinstance(answer, RedisError | OSError) for answer in answers), answers
    finally:
        await client.aclose()


async def test_a_restarted_redis_is_reconnected_and_given_the_script_again(
    redis_server_factory: Callable[..., RedisServerProcess],
) -> None:
    # Keys survive the restart (append-only file); the script cache and the connections do not.
    server = redis_server_factory(appendonly=True)
    client = aioredis.Redis.from_url(server.url)
    try:
        store = KeyStore(client, lambda *parts: ":".join(("restart", *parts)))
        _key, source = await new_key(store)
        assert (await store.admit(source, 400)).outcome == "admitted"

        server.stop()
        server.start()

        assert (await store.admit(source, 50)).outcome == "admitted"
        # The bucket survived too: the burst is still nearly spent.
        assert (await store.admit(source, 100)).outcome == "limited"
    finally:
        await client.aclose()
