"""A harness for destination plugins: the real collector and worker over a workspace document.

``forwarding(settings, plugin, document=...)`` runs the collector app (with a write key per
source of the document: ``"wk-<source>"``) and a worker in the test's event loop, applies the
document, and hands back a ``Forwarding`` to send events through the collector, apply new
versions, wait until a destination has settled everything, and read its dead letters. Events
take the whole real path: HTTP, normalisation, the Redis stream, the destination's consumer
group, its routing and mapping, the plugin.
"""

from __future__ import annotations

import asyncio
import base64
import textwrap
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.exceptions import ResponseError

from signalsmith.config import Settings
from signalsmith.deadletters import Letter, list_letters
from signalsmith.records import Source
from signalsmith.runtime import Runtime
from signalsmith.stream import dead_letter_key, replay_key, stream_key, text
from signalsmith.testing.harness import PluginSpec, RunningWorker, collector_client, running_worker
from signalsmith.testing.plugins import StaticKeys
from signalsmith.workspace import DocumentText
from signalsmith.workspace.operations import apply

WAIT_SECONDS = 60.0


def write_key(source: str) -> str:
    """The write key the harness accepts for ``source``."""
    return f"wk-{source}"


@dataclass
class Forwarding:
    """What ``forwarding`` runs (module docstring)."""

    settings: Settings
    client: AsyncTestClient[Litestar]
    worker: RunningWorker

    @property
    def runtime(self) -> Runtime:
        """The worker's runtime (its Redis client runs in the test's event loop)."""
        return self.worker.runtime

    async def send(self, *messages: dict[str, Any], source: str = "web") -> dict[str, Any]:
        """POST ``messages`` to ``/v1/batch`` as ``source``; the collector's JSON answer."""
        credentials = base64.b64encode(f"{write_key(source)}:".encode()).decode()
        response = await self.client.post(
            "/v1/batch",
            json={"batch": list(messages)},
            headers={"Authorization": f"Basic {credentials}"},
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def apply(self, document: str) -> int:
        """Apply ``document`` (YAML) as the next version; return once the worker and the
        collector both run it."""
        workspace = self.runtime.workspace
        result = await apply(
            workspace.store,
            workspace.registry,
            DocumentText(text=textwrap.dedent(document)),
            applied_by="test",
        )
        collector: Runtime = self.client.app.state.runtime
        for runtime in (self.runtime, collector):
            await _until(
                lambda r=runtime: (
                    r.workspace.active is not None and r.workspace.active.version == result.version
                ),
                f"workspace version {result.version} in use",
            )
        return result.version

    async def settled(self, sink: str) -> bool:
        """Whether ``sink``'s group has read and settled everything in the events stream and
        its replay stream."""
        redis = self.runtime.redis
        prefix = self.settings.key_prefix
        for stream in (stream_key(prefix), replay_key(prefix, sink)):
            try:
                groups = await redis.xinfo_groups(stream)
            except ResponseError:  # no such stream (nothing replayed yet)
                continue
            group = next((g for g in groups if text(g["name"]) == sink), None)
            if group is None:
                return False
            last = await redis.xrevrange(stream, count=1)
            if last and _id(group["last-delivered-id"]) < _id(last[0][0]):
                return False
            if int(group.get("pending") or 0):
                return False
        return True

    async def wait_settled(self, *sinks: str, within: float = WAIT_SECONDS) -> None:
        for sink in sinks:
            await _until(lambda s=sink: self.settled(s), f"{sink} settled", within)

    async def dead_letters(self, sink: str) -> list[Letter]:
        """``sink``'s dead-letter entries, each with its events and their reasons."""
        return await list_letters(
            self.runtime.redis, self.settings.key_prefix, sink, limit=100_000, events=True
        )

    async def dead_lettered(self, sink: str) -> dict[str, str]:
        """messageId -> reason of every event ``sink`` dead-lettered."""
        return {
            event.message_id: event.reason
            for letter in await self.dead_letters(sink)
            for event in letter.events
        }

    async def clear_dead_letters(self, sink: str) -> None:
        await self.runtime.redis.delete(dead_letter_key(self.settings.key_prefix, sink))


def _id(value: Any) -> tuple[int, int]:
    milliseconds, _, sequence = text(value).partition("-")
    return int(milliseconds), int(sequence or 0)


async def _until(condition: Any, what: str, within: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def forwarding(
    settings: Settings,
    *plugins: PluginSpec,
    document: str,
    sources: Iterable[str] = ("web",),
    **worker_options: Any,
) -> AsyncIterator[Forwarding]:
    """The collector and a worker over ``plugins`` with ``document`` applied (module
    docstring). ``sources`` get write keys; ``worker_options`` go to ``running_worker``."""
    keys = StaticKeys({write_key(name): Source(id=name, name=name) for name in sources})
    async with (
        collector_client(settings, (keys, "test-keys"), *plugins) as client,
        running_worker(settings, *plugins, **worker_options) as worker,
    ):
        harness = Forwarding(settings=settings, client=client, worker=worker)
        await harness.apply(document)
        yield harness


__all__ = ["Forwarding", "forwarding", "write_key"]
