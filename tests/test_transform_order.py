"""Transform order through the collector itself (the real app and pipeline in this process, a
real Redis): the workspace's order is the order transforms run, so rename-then-filter and
filter-then-rename treat the same event differently, and observers are told every rename and
every drop with the instance that did it."""

from __future__ import annotations

import asyncio
import base64
import textwrap
from typing import Any

import redis.asyncio as aioredis

from signalsmith import Outcome, Source, hookimpl
from signalsmith.config import Settings
from signalsmith.hooks import Hooks
from signalsmith.testing import StaticKeys, collector_client, plugin_manager, track
from signalsmith.testing.stream import read_events
from signalsmith.workspace import DocumentText, Registry, WorkspaceStore
from signalsmith.workspace.operations import apply
from signalsmith_transform_filter import plugin as filter_plugin
from signalsmith_transform_rename import plugin as rename_plugin

KEY = "wk-transform-order"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


class Observed:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    @hookimpl
    def observe_outcomes(self, outcomes: list[Outcome]) -> None:
        self.outcomes.extend(o for o in outcomes if o.stage == "transform")


def document(order: list[str]) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        sources:
          web: {{transforms: [{", ".join(order)}]}}
        transforms:
          legacy-names:
            type: rename
            settings:
              events: [{{from: Checkout Done, to: Order Completed}}]
          orders-only:
            type: filter
            settings: {{keep: 'event = "Order Completed"'}}
        """
    )


async def wait_for_version(runtime: Any, version: int) -> None:
    for _ in range(500):
        active = runtime.workspace.active
        if active is not None and active.version == version:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"version {version} not in use: {runtime.workspace.status()}")


async def test_the_workspace_order_is_the_order_transforms_run(
    settings: Settings, redis: aioredis.Redis
) -> None:
    observed = Observed()
    plugins: list[Any] = [
        StaticKeys({KEY: Source(id="web", name="web")}),
        (rename_plugin, "transform-rename"),
        (filter_plugin, "transform-filter"),
        observed,
    ]
    pm = plugin_manager(*plugins)
    store = WorkspaceStore(redis, lambda *parts: ":".join((settings.key_prefix, *parts)))
    registry = Registry.from_hooks(Hooks(plugin_manager(*plugins)))
    async with collector_client(settings, pm=pm) as client:
        runtime = client.app.state.runtime

        async def send(event: str) -> dict[str, Any]:
            message = track(event)
            answer = await client.post("/v1/track", json=message, headers=AUTH)
            assert answer.status_code == 200, answer.text
            return {"id": message["messageId"], **answer.json()}

        # Rename, then filter: the legacy name is renamed first, so the filter keeps it.
        await apply(
            store,
            registry,
            DocumentText(text=document(["legacy-names", "orders-only"])),
            applied_by="t",
        )
        await wait_for_version(runtime, 1)
        renamed_first = await send("Checkout Done")
        assert renamed_first["accepted"] == 1 and renamed_first["dropped"] == []
        # Filter, then rename: the same event is dropped before it could be renamed.
        await apply(
            store,
            registry,
            DocumentText(text=document(["orders-only", "legacy-names"])),
            applied_by="t",
        )
        await wait_for_version(runtime, 2)
        filtered_first = await send("Checkout Done")
        assert filtered_first["accepted"] == 0
        assert filtered_first["dropped"] == [
            {
                "index": 0,
                "messageId": filtered_first["id"],
                "stage": "transform",
                "reason": "orders-only",
                "detail": "dropped by filter 'orders-only': keep condition does not hold: "
                'event = "Order Completed"',
            }
        ]

    stored = {event.message_id: event for event in await read_events(redis, settings.key_prefix)}
    assert stored[renamed_first["id"]].event == "Order Completed"
    assert filtered_first["id"] not in stored
    by_event = {(o.message_id, o.status): o for o in observed.outcomes}
    renamed = by_event[(renamed_first["id"], "transformed")]
    assert renamed.reason == "legacy-names"
    assert renamed.detail == "renamed event 'Checkout Done' -> 'Order Completed'"
    assert renamed.event is not None and renamed.event.event == "Order Completed"
    dropped = by_event[(filtered_first["id"], "dropped")]
    assert dropped.reason == "orders-only"
    assert dropped.detail == (
        "dropped by filter 'orders-only': keep condition does not hold: event = \"Order Completed\""
    )
    assert (filtered_first["id"], "transformed") not in by_event
