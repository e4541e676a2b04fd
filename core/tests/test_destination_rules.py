"""What a destination instance is configured with, generically: routing rules (allow and deny
lists, FQL conditions, Segment's destination filters), mappings checked when the workspace is
applied, and the retry window after which failing events are dead-lettered.

Routers are asked directly; the worker runs against the real Redis.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from signalsmith.config import Settings
from signalsmith.hooks import Hooks
from signalsmith.model import Event, Identify, Page, Track, event_list_decoder
from signalsmith.records import (
    DestinationFilter,
    FilterAction,
    Routing,
    Sink,
    SinkError,
)
from signalsmith.routing import Router, sample_fraction
from signalsmith.stream import dead_letter_key, stream_key
from signalsmith.testing import (
    capture_sink_plugin,
    message_id,
    plugin_manager,
    running_worker,
    workspace_types,
)
from signalsmith.workspace import DocumentText, Registry, WorkspaceInvalid
from signalsmith.workspace.validation import load_document

NOW = datetime.now(UTC)


def track(name: str = "Order Completed", **fields: Any) -> Track:
    fields.setdefault("received_at", NOW)
    fields.setdefault("timestamp", NOW)
    fields.setdefault("project_id", "web")
    return Track(message_id=message_id(), event=name, **fields)


def router(**routing: Any) -> Router:
    return Router(Sink(name="hook", routing=Routing(**routing)))


# --- the rules ------------------------------------------------------------------------------------


def test_allow_and_deny_lists_of_types_and_event_names() -> None:
    rules = router(
        types=("track", "identify"),
        deny_types=("identify",),
        events=("Order *", "Signed Up"),
        deny_events=("Order Refunded",),
    )
    identify = Identify(message_id=message_id(), received_at=NOW, timestamp=NOW)
    page = Page(message_id=message_id(), received_at=NOW, timestamp=NOW)
    assert rules.route(track("Order Completed"))[1] is None
    assert rules.route(track("Signed Up"))[1] is None
    assert (
        rules.route(track("Order Refunded"))[1]
        == "routing: hook does not take event 'Order Refunded'"
    )
    assert rules.route(track("Viewed"))[1] == "routing: hook does not take event 'Viewed'"
    assert rules.route(identify)[1] == "routing: hook does not take identify events"
    assert rules.route(page)[1] == "routing: hook takes identify, track, not page"


def test_a_condition_in_fql_on_any_field() -> None:
    rules = router(condition="properties.revenue >= 100 and !contains(context.page.url, 'staging')")
    rich = track(properties={"revenue": 150}, context={"page": {"url": "https://shop/x"}})
    poor = track(properties={"revenue": 5}, context={"page": {"url": "https://shop/x"}})
    staging = track(properties={"revenue": 500}, context={"page": {"url": "https://staging/x"}})
    missing = track()
    assert rules.route(rich) == (rich, None)
    for refused in (poor, staging, missing):
        event, reason = rules.route(refused)
        assert event is None
        assert reason is not None and reason.startswith("routing: hook takes events where ")


def test_destination_filters_apply_in_segments_order_and_trim_properties() -> None:
    # Listed in the "wrong" order on purpose: samples, then drops, then property edits, always.
    filters = (
        DestinationFilter(
            title="allow only",
            condition="all",
            actions=(
                FilterAction(
                    type="ALLOW_PROPERTIES",
                    fields={
                        "properties": ("sku", "price", "products"),
                        "properties.products": ("sku",),
                    },
                ),
            ),
        ),
        DestinationFilter(
            title="strip pii",
            condition="all",
            actions=(
                FilterAction(
                    type="DROP_PROPERTIES",
                    fields={
                        "": ("userId", "messageId"),
                        "context": ("ip",),
                        "properties": ("price",),
                    },
                ),
            ),
        ),
        DestinationFilter(
            title="internal",
            condition="match(context.traits.email, '*@example.com')",
            actions=(FilterAction(type="DROP"),),
        ),
        DestinationFilter(
            title="no tests",
            condition="event = 'Test'",
            actions=(FilterAction(type="SAMPLE", percent=0.0),),
        ),
        DestinationFilter(
            title="mobile only",
            source="ios",
            condition="all",
            actions=(FilterAction(type="DROP"),),
        ),
    )
    rules = router(filters=filters)
    event = track(
        user_id="u-1",
        context={"ip": "10.1.1.1", "traits": {"email": "ana@customer.com"}},
        properties={
            "sku": "a",
            "price": 3,
            "secret": "x",
            "products": [{"sku": "p1", "cost": 1}, {"sku": "p2", "cost": 2}],
        },
    )
    routed, reason = rules.route(event)
    assert reason is None and routed is not None
    assert routed.user_id is None
    assert routed.message_id == event.message_id  # never removable
    assert routed.context == {"traits": {"email": "ana@customer.com"}}
    assert routed.properties == {"sku": "a", "products": [{"sku": "p1"}, {"sku": "p2"}]}
    # The event the worker read is not changed: retries and dead letters keep it whole.
    assert event.properties["secret"] == "x" and event.user_id == "u-1"

    internal = track(context={"traits": {"email": "qa@example.com"}})
    assert rules.route(internal) == (None, "filter 'internal': dropped")
    assert rules.route(track("Test")) == (None, "filter 'no tests': sampled out (0 kept)")
    assert rules.route(track(project_id="ios")) == (None, "filter 'mobile only': dropped")


def test_deterministic_sampling_keeps_the_same_events_every_time() -> None:
    rules = router(
        filters=(
            DestinationFilter(
                condition="type = 'track'",
                actions=(FilterAction(type="SAMPLE", percent=0.3, path="userId"),),
            ),
        )
    )
    users = [f"user-{n}" for n in range(400)]
    kept = {user for user in users if rules.route(track(user_id=user))[0] is not None}
    again = {user for user in users if rules.route(track(user_id=user))[0] is not None}
    assert kept == again
    assert kept == {user for user in users if sample_fraction(user) < 0.3}
    assert 60 < len(kept) < 180  # about 30 % of 400


# --- the workspace checks what a destination declares --------------------------------------------


def registry() -> Registry:
    return Registry.from_hooks(Hooks(plugin_manager(workspace_types)))


DOCUMENT = """\
version: 1
sources:
  web: {destinations: [hook]}
  ios: {destinations: [hook]}
destinations:
  hook:
    type: http-post
    settings: {url: "https://example.com/in"}
    routing:
      types: [track, identify]
      deny_events: ["Test *"]
      if: "length(userId) > 0"
      filters:
        - id: df_2Abc
          sourceId: ios
          destinationId: ds_9
          title: No internal traffic
          enabled: true
          if: "match(context.traits.email, '*@example.com')"
          actions: [{type: DROP}]
          createdAt: "2024-05-01T10:00:00.000Z"
        - {if: all, actions: [{type: DROP_PROPERTIES, fields: {"": [anonymousId], context: [ip]}}]}
        - {if: "type = 'identify'", actions: [{type: sample_event, percent: 0.5, path: userId}]}
    mapping:
      track:
        order: {"@path": "$.properties.order_id"}
        email: {"@case": {operator: lower, value: {"@path": "$.context.traits.email"}}}
    mappings:
      - name: purchase
        trigger: 'type = "track" and event = "Order Completed"'
        mapping: {total: {"@path": "$.properties.revenue"}}
    retry_window_seconds: 600
"""


def test_a_destination_with_rules_filters_and_mappings_is_typed() -> None:
    document, _ = load_document(DocumentText(text=DOCUMENT), registry())
    hook = document.destinations["hook"]
    assert hook.routing.deny_events == ("Test *",)
    assert hook.routing.condition == "length(userId) > 0"
    first, second, third = hook.routing.filters
    assert first.source == "ios" and first.title == "No internal traffic"
    assert second.actions[0].fields == {"": ("anonymousId",), "context": ("ip",)}
    assert third.actions[0].type == "SAMPLE"  # Segment's older name, read as the new one
    assert hook.retry_window_seconds == 600
    assert hook.max_attempts is None  # the window decides
    order = track(
        properties={"order_id": "o-1", "revenue": 9},
        context={"traits": {"email": "A@B.C"}},
    )
    assert hook.event_mapping.payload(order) == {"total": 9}
    other = msgspec.structs.replace(order, event="Viewed")
    assert hook.event_mapping.payload(other) == {"order": "o-1", "email": "a@b.c"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('if: "length(userId) > 0"', 'if: "length(userId) >"'),
            "destinations.hook.routing.if: not a valid FQL condition: the condition ends too early",
        ),
        (
            ("actions: [{type: DROP}]", "actions: [{type: DROP, percent: 0.1}]"),
            "destinations.hook.routing.filters[0].actions[0]: only SAMPLE takes `percent`",
        ),
        (
            ("sourceId: ios", "sourceId: android"),
            "destinations.hook.routing.filters[0].source: source 'android' is not declared",
        ),
        (
            ("percent: 0.5, path: userId", "path: userId"),
            "destinations.hook.routing.filters[2].actions[0]: a SAMPLE action needs `percent`",
        ),
        (
            ("{type: DROP_PROPERTIES, fields:", "{type: DROP_PROPERTIES, fieldz:"),
            "destinations.hook.routing.filters[1].actions[0]: object contains unknown field `fieldz`",
        ),
        (
            ("operator: lower", "operator: title"),
            'destinations.hook.mapping.track.email.@case.operator: expected "lower" or "upper"',
        ),
        (
            ('trigger: \'type = "track" and', 'trigger: \'type = "track" and and'),
            "destinations.hook.mappings[0].trigger: expected a value",
        ),
        (
            ('total: {"@path": "$.properties.revenue"}', 'total: {"@path": "$.x", extra: 1}'),
            "destinations.hook.mappings[0].mapping.total: a directive object (@path) cannot have",
        ),
        (
            ("    mapping:\n      track:", "    mapping:\n      purchase:"),
            "destinations.hook.mapping",
        ),
        (("retry_window_seconds: 600", "retry_window_seconds: 0"), "retry_window_seconds"),
    ],
)
def test_every_mistake_in_rules_and_mappings_is_refused_at_its_path(
    change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in DOCUMENT
    with pytest.raises(WorkspaceInvalid) as refused:
        load_document(DocumentText(text=DOCUMENT.replace(old, new, 1)), registry())
    errors = [str(error) for error in refused.value.errors]
    assert any(expected in error for error in errors), errors
    assert all("(line " in error for error in errors), errors


# --- the worker ------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], Any], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def append(redis: aioredis.Redis, settings: Settings, events: list[Event]) -> None:
    from signalsmith.stream import entry_fields

    fields = entry_fields("web", events)
    await redis.xadd(
        stream_key(settings.key_prefix), dict(zip(fields[::2], fields[1::2], strict=True))
    )


async def dead_letters(
    redis: aioredis.Redis, settings: Settings, sink: str
) -> list[dict[str, Any]]:
    entries = await redis.xrange(dead_letter_key(settings.key_prefix, sink))
    return [{key.decode(): value for key, value in fields.items()} for _, fields in entries]


async def test_the_worker_hands_the_plugin_filtered_events(
    settings: Settings, redis: aioredis.Redis
) -> None:
    sink = capture_sink_plugin(
        "trimmed",
        max_wait_seconds=0.05,
        routing=Routing(
            deny_events=("Test",),
            filters=(
                DestinationFilter(
                    actions=(
                        FilterAction(type="DROP_PROPERTIES", fields={"properties": ("email",)}),
                    )
                ),
            ),
        ),
    )
    kept = track(properties={"email": "a@b.c", "plan": "pro"})
    await append(redis, settings, [kept, track("Test")])
    async with running_worker(settings, (sink.plugin, sink.name)):
        await wait_until(lambda: sink.batches, "a batch")
    [[delivered]] = sink.batches
    assert delivered.message_id == kept.message_id
    assert delivered.properties == {"plan": "pro"}


async def test_failing_events_are_retried_until_their_window_from_received_at_has_passed(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """The window runs from each event's received_at: an event received long ago (a batch
    reclaimed after a restart, say) is dead-lettered on its first failure, a recent one is
    retried until the window ends, with the last failure as its reason."""
    attempts: list[list[str]] = []

    def fail(events: list[Event]) -> None:
        attempts.append([e.message_id for e in events])
        raise SinkError("HTTP 503 from the destination")

    sink = capture_sink_plugin(
        "down", deliver=fail, max_wait_seconds=0.05, max_attempts=None, retry_window_seconds=1.0
    )
    old = track("Old", received_at=NOW - timedelta(hours=5))
    await append(redis, settings, [old])
    async with running_worker(settings, (sink.plugin, sink.name)):
        await wait_until(lambda: dead_letters(redis, settings, "down"), "the old event")
        [letter] = await dead_letters(redis, settings, "down")
        assert [e.message_id for e in event_list_decoder.decode(letter["d"])] == [old.message_id]
        assert letter["attempts"] == b"1"
        assert letter["error"].decode() == (
            "SinkError: HTTP 503 from the destination (still failing after the retry window of 1s)"
        )
        recent = track("Recent", received_at=datetime.now(UTC))
        await append(redis, settings, [recent])
        await wait_until(
            lambda: _count(dead_letters(redis, settings, "down"), 2), "the recent event"
        )
    [_, letter] = await dead_letters(redis, settings, "down")
    assert [e.message_id for e in event_list_decoder.decode(letter["d"])] == [recent.message_id]
    # Retried for the window (the settings fixture's backoff is milliseconds), then given up on.
    assert int(letter["attempts"]) > 3
    assert sum(1 for batch in attempts if batch == [recent.message_id]) == int(letter["attempts"])


async def _count(letters: Any, wanted: int) -> bool:
    return len(await letters) >= wanted


def test_the_default_retry_window_is_four_hours() -> None:
    assert Settings().worker_retry_window_seconds == 4 * 3600
    assert (
        Settings.from_env(
            {"SIGNALSMITH_WORKER_RETRY_WINDOW_SECONDS": "60"}
        ).worker_retry_window_seconds
        == 60
    )


def test_the_json_schema_describes_rules_filters_and_mappings() -> None:
    import jsonschema
    import yaml

    from signalsmith.workspace.schema import workspace_schema

    schema = workspace_schema(registry())
    jsonschema.validate(yaml.safe_load(DOCUMENT), schema)
    bad = yaml.safe_load(DOCUMENT.replace("deny_events:", "deny_event:"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
