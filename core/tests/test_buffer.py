"""EventBuffer: coalesced appends, one round trip per flush, and recovery from a script flush."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import pytest
import redis.asyncio as aioredis

from signalsmith.buffer import EventBuffer
from signalsmith.config import Settings
from signalsmith.embedded import RedisServerProcess
from signalsmith.model import Track, event_list_decoder
from signalsmith.stream import stream_key


def _events(*message_ids: str) -> list[Track]:
    now = datetime.now(UTC)
    return [
        Track(message_id=m, received_at=now, timestamp=now, event="Order Completed", user_id="u")
        for m in message_ids
    ]


def _buffer(redis: aioredis.Redis, prefix: str) -> EventBuffer:
    return EventBuffer(redis, key_prefix=prefix, backlog_max_entries=0, dedupe_ttl_seconds=60)


async def test_coalesced_appends_each_get_their_own_duplicates(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    buffer = _buffer(redis, key_prefix)
    try:
        first = await buffer.append("src", _events("a", "b"))
        results = await asyncio.gather(
            buffer.append("src", _events("b", "c")),
            buffer.append("src", _events("d")),
            buffer.append("src", _events("a", "b")),
        )
    finally:
        await buffer.close()
    assert first == []
    assert results == [[0], [], [0, 1]]
    entries = await redis.xrange(stream_key(key_prefix))
    # An append whose events were all duplicates adds no entry.
    assert len(entries) == 3
    stored = [event_list_decoder.decode(fields[b"d"]) for _id, fields in entries]
    assert [[e.message_id for e in events] for events in stored] == [["a", "b"], ["b", "c"], ["d"]]
    assert entries[1][1][b"dup"] == b"0"


async def test_a_message_id_repeated_within_one_request_is_a_duplicate(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    buffer = _buffer(redis, key_prefix)
    try:
        assert await buffer.append("src", _events("a", "b", "a", "c", "b")) == [2, 4]
        assert await buffer.append("src", _events("c", "d")) == [0]
    finally:
        await buffer.close()


async def test_a_request_of_thousands_of_events_is_deduplicated_across_chunks(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    # More ids than Lua unpacks into one call (about 8,000): the script goes in chunks of 1,000,
    # and a duplicate's index must come out right on either side of a chunk's edge.
    many = [f"id-{index}" for index in range(9_000)]
    buffer = _buffer(redis, key_prefix)
    try:
        assert await buffer.append("src", _events(*many)) == []
        again = _events("new-1", *many[999:1001], "new-2", many[-1])
        assert await buffer.append("src", again) == [1, 2, 4]
    finally:
        await buffer.close()


async def test_ids_are_remembered_for_the_ttl_and_forgotten_after_one_and_a_half(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    # TTL 2 s: buckets of 1 s; an id is found while its bucket is one of the last three.
    buffer = EventBuffer(redis, key_prefix=key_prefix, backlog_max_entries=0, dedupe_ttl_seconds=2)
    try:
        assert await buffer.append("src", _events("early")) == []
        seen_by = (await redis.time())[0]  # the bucket of "early" is at most this second
        await asyncio.sleep(1.0)
        # Younger than the TTL: a duplicate.
        assert await buffer.append("src", _events("early", "new")) == [0]
        # Three buckets on, past one and a half TTLs at the most, it is new again.
        while True:
            if (await redis.time())[0] >= seen_by + 3:
                break
            await asyncio.sleep(0.1)
        assert await buffer.append("src", _events("early")) == []
    finally:
        await buffer.close()
    # Only buckets still in the window are kept, each with an expiry.
    buckets = [key async for key in redis.scan_iter(match=f"{key_prefix}:seen-ids:*")]
    assert 1 <= len(buckets) <= 3
    for bucket in buckets:
        assert await redis.ttl(bucket) > 0


async def test_appends_survive_a_script_flush(
    redis_server_factory: Callable[..., RedisServerProcess],
) -> None:
    # A private server: flushing the scripts of a shared one would disturb other tests.
    redis = aioredis.Redis.from_url(redis_server_factory().url)
    buffer = _buffer(redis, "p")
    try:
        assert await buffer.append("src", _events("x")) == []
        await redis.script_flush()
        # Redis answers NOSCRIPT, having done nothing; the buffer loads the script and resends.
        results = await asyncio.gather(*(buffer.append("src", _events(f"y{i}")) for i in range(5)))
        assert results == [[]] * 5
        assert await redis.xlen(stream_key("p")) == 6
    finally:
        await buffer.close()
        await redis.aclose()


def test_a_dedupe_ttl_under_a_second_is_refused_at_startup() -> None:
    # Buckets are half the TTL: a zero TTL would make every append fail in Redis instead.
    with pytest.raises(msgspec.ValidationError, match="dedupe_ttl_seconds"):
        Settings.from_env({"SIGNALSMITH_DEDUPE_TTL_SECONDS": "0"})
    assert Settings.from_env({"SIGNALSMITH_DEDUPE_TTL_SECONDS": "1"}).dedupe_ttl_seconds == 1


async def test_an_integer_a_plugin_made_past_64_bits_is_stored_as_a_double(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    # Normalisation fits every client's number; a transform may still compute a bigger one.
    plain, big = _events("plain", "big")
    big.properties["hash"] = 2**127
    big.context["nested"] = [{"n": -(2**70)}]
    buffer = _buffer(redis, key_prefix)
    try:
        assert await buffer.append("src", [plain, big]) == []
    finally:
        await buffer.close()
    ((_, fields),) = await redis.xrange(stream_key(key_prefix))
    stored_plain, stored_big = event_list_decoder.decode(fields[b"d"])
    assert stored_plain == plain
    assert stored_big.properties == {"hash": float(2**127)}
    assert stored_big.context == {"nested": [{"n": float(-(2**70))}]}
