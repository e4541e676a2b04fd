"""Deleting the consumer group of a destination the workspace no longer declares.

A consumer group holds the stream's trimming back to what it acknowledged, so the group of a
removed destination, left alone, would keep every later event in Redis. A worker deletes it once
no consumer has touched it for ``RETIRE_IDLE_MS`` (a worker still running the destination, on an
older version it cannot leave, keeps it alive). Only names some version declared as destinations
are considered: sinks that plugins register (in this process or another) are never touched. Its
dead-letter stream stays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from signalsmith.stream import group_names

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from signalsmith.workspace.follower import Workspace

RETIRE_IDLE_MS = 10_000


async def retire_removed_destinations(
    redis: aioredis.Redis, stream: str, workspace: Workspace, keep: Iterable[str]
) -> list[str]:
    """Delete the groups of destinations removed from the workspace; return their names."""
    active = workspace.active
    if active is None:
        return []
    current = {sink.name for sink in active.destinations} | set(keep)
    removed = await workspace.store.destination_names() - current
    if not removed:
        return []
    retired = []
    for name in await group_names(redis, stream):
        if name not in removed:
            continue
        consumers = await redis.xinfo_consumers(stream, name)
        if any(int(consumer.get("idle", 0)) < RETIRE_IDLE_MS for consumer in consumers):
            continue
        await redis.xgroup_destroy(stream, name)
        retired.append(name)
    return retired
