"""The worker inside the collector's process: what `signalsmith serve` runs on the embedded
defaults, where one process holds everything (an embedded warehouse allows only one).

A companion of the collector app (``signalsmith.collector.health.Companion``): it starts once
the runtime has, and stops in order: the server has stopped accepting and its requests are
answered, then the worker delivers and acknowledges what they buffered (a bounded wait), and
only then does the runtime close. So an event answered 200 before Ctrl-C is delivered by this
run, not the next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from signalsmith.runtime import Runtime
from signalsmith.stream import parse_id, stream_key, text
from signalsmith.worker import Worker

log = logging.getLogger("signalsmith.embedded_worker")

# How long the worker gets to deliver and acknowledge what is in the stream at shutdown, and
# then to finish its batches, before it stops regardless (what it has not acknowledged stays
# buffered for the next start).
SHUTDOWN_DRAIN_SECONDS = 10.0
SHUTDOWN_FINISH_SECONDS = 30.0


class EmbeddedWorker:
    """The sinks' worker, run as a task of the collector's event loop."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._runtime: Runtime | None = None

    async def start(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._task = asyncio.create_task(Worker(runtime).run(self._stop), name="worker")

    def problems(self) -> list[str]:
        task = self._task
        if task is None or not task.done():
            return []
        error = None if task.cancelled() else task.exception()
        if error is not None:
            return [f"worker: stopped ({type(error).__name__}; see the server log)"]
        return ["worker: stopped"]

    async def stop(self, requests_in_flight: Callable[[], int]) -> None:
        task, runtime = self._task, self._runtime
        if task is None or runtime is None:
            return
        await _drain(runtime, task, requests_in_flight)
        self._stop.set()
        try:
            await asyncio.wait_for(task, timeout=SHUTDOWN_FINISH_SECONDS)
        except TimeoutError:
            log.warning(
                "the embedded worker did not finish its batches in %g s", SHUTDOWN_FINISH_SECONDS
            )


async def _drain(
    runtime: Runtime, task: asyncio.Task[None], requests_in_flight: Callable[[], int]
) -> None:
    """Let the worker deliver and acknowledge every entry in the stream (bounded wait)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHUTDOWN_DRAIN_SECONDS
    active = runtime.workspace.active
    sinks = {sink.name for sink in runtime.sinks}
    sinks |= {sink.name for sink in active.destinations} if active is not None else set()
    behind: dict[str, str] = {}
    while not task.done():
        try:
            behind = await _undelivered(
                runtime.redis, stream_key(runtime.settings.key_prefix), sinks
            )
        except (RedisError, OSError) as error:
            log.warning("stopping the worker without draining: Redis: %s", error)
            return
        # A request still being answered may yet buffer events.
        if not behind and not requests_in_flight():
            return
        if loop.time() >= deadline:
            log.warning(
                "stopping the worker with entries not yet delivered (%s); they stay buffered "
                "for the next start",
                ", ".join(f"{name}: {what}" for name, what in sorted(behind.items())),
            )
            return
        await asyncio.sleep(0.05)


async def _undelivered(redis: aioredis.Redis, stream: str, sinks: set[str]) -> dict[str, str]:
    """The sinks that have not acknowledged every entry of the stream, each with how far."""
    try:
        last = parse_id((await redis.xinfo_stream(stream))["last-generated-id"])
    except ResponseError:  # no stream yet: nothing was ever accepted
        return {}
    behind = {}
    for group in await redis.xinfo_groups(stream):
        name = text(group["name"])
        if name not in sinks:
            continue
        unread = parse_id(group["last-delivered-id"]) < last
        if group["pending"] or unread:
            behind[name] = f"{group['pending']} pending" + (", more unread" if unread else "")
    return behind
