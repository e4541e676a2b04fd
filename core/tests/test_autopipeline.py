"""AutoPipelineRedis: concurrent commands share round trips, each caller gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.exceptions import ResponseError

from signalsmith.autopipeline import AutoPipelineRedis, _Queued, _shareable
from signalsmith.embedded import RedisServerProcess


class CountingClient(AutoPipelineRedis):
    """Records the size of every round trip the client makes for queued commands."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.round_trips: list[int] = []

    async def _send(self, batch: list[_Queued]) -> None:
        self.round_trips.append(len(batch))
        await super()._send(batch)


@pytest.fixture
async def client(redis_url: str, key_prefix: str) -> AsyncIterator[CountingClient]:
    redis = CountingClient.from_url(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_concurrent_commands_share_round_trips(
    client: CountingClient, key_prefix: str
) -> None:
    keys = [f"{key_prefix}:n{i}" for i in range(50)]
    await asyncio.gather(*(client.set(key, index) for index, key in enumerate(keys)))
    values = await asyncio.gather(*(client.get(key) for key in keys))
    assert values == [str(index).encode() for index in range(50)]
    # The first command of each burst goes out alone at once; the others wait for it and then
    # share one round trip.
    assert sum(client.round_trips) >= 98
    assert len(client.round_trips) <= 4


async def test_each_caller_gets_its_own_error(client: CountingClient, key_prefix: str) -> None:
    await client.set(f"{key_prefix}:text", "not a number")
    results = await asyncio.gather(
        client.incr(f"{key_prefix}:counter"),
        client.incr(f"{key_prefix}:text"),
        client.get(f"{key_prefix}:text"),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], ResponseError)
    assert results[2] == b"not a number"


async def test_scripts_are_loaded_again_after_a_flush(
    redis_server_factory: Callable[..., RedisServerProcess],
) -> None:
    # A private server: flushing the scripts of a shared one would disturb other tests.
    client = AutoPipelineRedis.from_url(redis_server_factory().url)
    try:
        script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        assert await script(keys=["scripted"], args=[2]) == 2
        await client.script_flush()
        # NOSCRIPT reaches each caller that sent the EVALSHA, which loads the script and retries.
        await asyncio.gather(*(script(keys=["scripted"], args=[1]) for _ in range(5)))
        assert int(await client.get("scripted")) == 7
    finally:
        await client.aclose()


async def test_replies_parse_as_without_pipelining(client: CountingClient, key_prefix: str) -> None:
    key = f"{key_prefix}:hash"
    await client.hset(key, mapping={"a": "1", "b": "2"})
    assert await client.hgetall(key) == {b"a": b"1", b"b": b"2"}
    assert await client.exists(key) == 1


def test_blocking_commands_never_share_a_round_trip() -> None:
    assert not _shareable(("BLPOP", "k", 1))
    assert not _shareable(("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "BLOCK", 100, "STREAMS"))
    assert not _shareable((b"XREAD", b"block", 5, b"STREAMS", b"s", b"$"))
    assert _shareable(("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", "s", ">"))
    assert _shareable(("EVALSHA", "abc", 1, "k"))


async def test_a_blocking_read_does_not_hold_up_other_commands(
    client: CountingClient, key_prefix: str
) -> None:
    stream = f"{key_prefix}:stream"
    reader = asyncio.create_task(client.xread({stream: "$"}, block=2000))
    await asyncio.sleep(0)
    # Answered while the read still waits for an entry (it went out on its own connection).
    assert await client.ping()
    assert not reader.done()
    await client.xadd(stream, {"f": "v"})
    assert await reader
