"""A Redis client whose concurrent commands share round trips (auto-pipelining).

Every request of the collector awaits Redis at least twice (a plugin's admit script, the buffer's
append), and redis-py spends far more CPU per awaited command than Redis does: connection
checkout, a task for the write timeout, the read, the release (about 70 µs a command here). Like
ioredis' and node-redis' auto-pipelining, a command is sent at once when no round trip is under
way, and commands that arrive while one is go together in the next, as one pipeline. Each caller
still gets its own reply or its own error, only after Redis answered, so nothing about a
command's meaning changes.

Blocking commands (``XREADGROUP ... BLOCK``, ``BLPOP`` ...) would hold up everything queued
behind them, so they, and commands asking for a dedicated connection, go out on their own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis

log = logging.getLogger("signalsmith.autopipeline")

# Commands that may wait on the server, and so must never share a round trip.
BLOCKING = frozenset(
    {
        "BLPOP",
        "BRPOP",
        "BRPOPLPUSH",
        "BLMOVE",
        "BLMPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BZMPOP",
        "WAIT",
        "WAITAOF",
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "MONITOR",
        "MULTI",
        "EXEC",
        "WATCH",
        "UNWATCH",
        "DISCARD",
    }
)
# Commands that block only when given a BLOCK argument.
BLOCK_ARGUMENT = frozenset({"XREAD", "XREADGROUP"})
# At most this many commands in one round trip; more wait for the next one.
MAX_BATCH = 512


class _Queued:
    __slots__ = ("args", "future", "options")

    def __init__(self, args: tuple[Any, ...], options: dict[str, Any], future: asyncio.Future[Any]):
        self.args = args
        self.options = options
        self.future = future


class AutoPipelineRedis(aioredis.Redis):
    """``redis.asyncio.Redis`` that sends the commands of concurrent coroutines together."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[_Queued] = []
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        # A round trip is under way; shareable commands arriving meanwhile wait for the next.
        self._in_flight = False

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if not _shareable(args):
            return await super().execute_command(*args, **options)
        if not self._in_flight and not self._queue:
            # Nothing under way: send at once from the caller's own task (no hand-over to the
            # flusher), so a lone command costs what it costs on a plain client.
            self._in_flight = True
            try:
                return await super().execute_command(*args, **options)
            finally:
                self._in_flight = False
                if self._queue:
                    self._wake_flusher()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(args, options, future))
        self._wake_flusher()
        return await future

    def _wake_flusher(self) -> None:
        flusher = self._flusher
        if flusher is None or flusher.done():
            self._wake = asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever(self._wake))
        assert self._wake is not None
        self._wake.set()

    async def _flush_forever(self, wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            # A command sent from its caller's task wakes us again when it is done.
            while self._queue and not self._in_flight:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                self._in_flight = True
                try:
                    await self._send(batch)
                finally:
                    self._in_flight = False

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            pipe = self.pipeline(transaction=False)
            for item in batch:
                pipe.execute_command(*item.args, **item.options)
            results = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.cancel()
            raise
        except Exception as error:  # every caller must be answered, whatever failed
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue  # its caller was cancelled
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    async def stop(self) -> None:
        """Stop sending queued commands; their callers get a ConnectionError."""
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except (asyncio.CancelledError, Exception):
                pass
            self._flusher = None
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(aioredis.ConnectionError("the Redis client was closed"))
        self._queue = []

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.stop()
        await super().aclose(close_connection_pool)


def _shareable(args: tuple[Any, ...]) -> bool:
    name = args[0]
    if isinstance(name, bytes):
        name = name.decode()
    name = str(name).upper()
    if name in BLOCKING:
        return False
    if name in BLOCK_ARGUMENT:
        return not any(isinstance(arg, str | bytes) and _is_block(arg) for arg in args[1:])
    return True


def _is_block(arg: str | bytes) -> bool:
    return (arg.decode(errors="replace") if isinstance(arg, bytes) else arg).upper() == "BLOCK"
