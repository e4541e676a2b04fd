"""Every stage's outcome reaches the trace: a real collector app and a real worker, on real Redis,
with small plugins standing in for contracts, transforms, consent, rate limits and sinks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from signalsmith import (
    Drop,
    Event,
    Outcome,
    Refusal,
    Settings,
    Sink,
    SinkError,
    Source,
    StageResult,
    Track,
    hookimpl,
)
from signalsmith.testing import (
    StaticKeys,
    capture_sink_plugin,
    collector_client,
    message_id,
    plugin_manager,
    running_worker,
    track,
)


class MemoryWarehouse:
    """A warehouse sink that keeps what it is given."""

    name = "memory-warehouse"

    def __init__(self) -> None:
        self.written: list[Event] = []

    @hookimpl
    def register_warehouses(self, register: Callable[[Sink], None]) -> None:
        register(Sink(name="memory", max_wait_seconds=0.02))

    @hookimpl
    def write_events(self, warehouse: Sink, events: list[Event]) -> None:
        self.written += events


class Stages:
    """A contract that flags a non-numeric price, a rename, and consent for ads."""

    name = "stages"

    @hookimpl
    def validate_events(self, source: Source, events: list[Event]) -> StageResult | None:
        outcomes = [
            Outcome(
                stage="validate",
                status="violation",
                message_id=event.message_id,
                source_id=source.id,
                reason="Invalid Type",
                detail="properties.price must be a number",
                event=event,
            )
            for event in events
            if isinstance(event, Track) and isinstance(event.properties.get("price"), str)
        ]
        return StageResult(events=events, outcomes=outcomes) if outcomes else None

    @hookimpl
    def transform_events(self, events: list[Event]) -> StageResult:
        return StageResult(
            events=[
                msgspec.structs.replace(event, event="Order Completed")
                if isinstance(event, Track) and event.event == "Order Done"
                else event
                for event in events
            ]
        )

    @hookimpl
    def apply_consent(self, events: list[Event]) -> StageResult | None:
        refused = [
            event
            for event in events
            if event.context.get("consent", {}).get("categoryPreferences", {}).get("ads") is False
        ]
        if not refused:
            return None
        return StageResult(
            events=[event for event in events if event not in refused],
            dropped=[Drop(event=e, reason="no_consent", detail="ads: false") for e in refused],
        )


class AppIsOverItsLimit:
    name = "limits"

    @hookimpl
    def admit_events(self, source: Source) -> Refusal | None:
        if source.id == "app":
            return Refusal(retry_after=3, message="source app is over its rate limit")
        return None


@pytest.fixture
def collector(admin_settings: Settings, kit: Any):  # type: ignore[no-untyped-def]
    """The collector app, and a worker with the debugger (it records the buffered events)."""
    pm = plugin_manager(StaticKeys(kit.KEYS), kit.DEBUGGER, Stages(), AppIsOverItsLimit())
    return kit.with_worker(admin_settings, collector_client(admin_settings, pm=pm))


async def test_an_accepted_event_is_traced_from_its_request_to_every_sink(
    kit: Any, admin_settings: Settings, collector: Any
) -> None:
    warehouse = MemoryWarehouse()
    hook = capture_sink_plugin("hook", max_wait_seconds=0.02)
    body = track("Order Completed", userId="ada", properties={"price": 12.5})
    async with collector as client:
        response = await client.post("/v1/track", json=body, headers=kit.basic())
        assert response.status_code == 200
        async with running_worker(admin_settings, kit.DEBUGGER, warehouse, (hook.plugin, "hook")):
            trace = await kit.trace_of(
                client,
                body["messageId"],
                lambda t: (
                    len(t["sinks"]) == 2 and all(s["status"] == "delivered" for s in t["sinks"])
                ),
            )
    assert kit.steps(trace) == [
        ("normalise", "accepted"),
        ("buffer", "buffered"),
        ("deliver", "delivered"),
        ("deliver", "delivered"),
    ]
    assert trace["sourceIds"] == ["web"]
    assert (trace["type"], trace["event"], trace["userId"]) == ("track", "Order Completed", "ada")
    assert trace["summary"] == (
        "accepted and buffered; written to warehouse 'memory'; delivered to destination 'hook'"
    )
    received, buffered = trace["steps"][0], trace["steps"][1]
    # The event as received is kept once; the buffer step did not change it.
    assert received["payload"]["properties"] == {"price": 12.5}
    assert received["payload"]["messageId"] == body["messageId"]
    assert "payload" not in buffered
    assert {(s["sink"], s["sinkKind"]) for s in trace["steps"][2:]} == {
        ("memory", "warehouse"),
        ("hook", "destination"),
    }
    # The worker records every buffered event (the debugger's sink reads the buffer), so the
    # collector's request reported none of it.
    assert {s["role"] for s in trace["steps"]} == {"worker"}


async def test_a_transform_and_a_consent_drop_show_in_the_trace(kit: Any, collector: Any) -> None:
    renamed = track("Order Done", userId="ada")
    refused = track(
        "Ad Clicked", userId="bob", context={"consent": {"categoryPreferences": {"ads": False}}}
    )
    async with collector as client:
        response = await client.post(
            "/v1/batch", json={"batch": [renamed, refused]}, headers=kit.basic()
        )
        assert response.json()["dropped"][0]["reason"] == "no_consent"
        rename_trace = await kit.trace_of(
            client, renamed["messageId"], lambda t: len(t["steps"]) >= 2
        )
        drop_trace = await kit.trace_of(
            client, refused["messageId"], lambda t: len(t["steps"]) >= 2
        )
    # The transform made a new event: the buffer step keeps the event as it was buffered.
    assert kit.steps(rename_trace) == [("normalise", "accepted"), ("buffer", "buffered")]
    first, last = rename_trace["steps"]
    assert first["payload"]["event"] == "Order Done"
    assert last["payload"]["event"] == "Order Completed"
    assert kit.steps(drop_trace) == [("normalise", "accepted"), ("consent", "dropped")]
    assert drop_trace["steps"][1]["reason"] == "no_consent"
    assert drop_trace["summary"] == "dropped at consent: no_consent (ads: false)"


async def test_a_violation_is_part_of_the_events_path(kit: Any, collector: Any) -> None:
    flagged = track("Order Completed", userId="ada", properties={"price": "12"})
    async with collector as client:
        await client.post("/v1/track", json=flagged, headers=kit.basic())
        trace = await kit.trace_of(client, flagged["messageId"], lambda t: len(t["steps"]) >= 3)
    assert kit.steps(trace) == [
        ("normalise", "accepted"),
        ("validate", "violation"),
        ("buffer", "buffered"),
    ]
    assert trace["steps"][1]["detail"] == "properties.price must be a number"
    assert "contract violations: Invalid Type" in trace["summary"]


async def test_a_message_rejected_alone_is_traced_with_what_was_sent(
    kit: Any, collector: Any
) -> None:
    good = track("Order Completed", userId="ada")
    bad = track("", userId="ada")  # a track without an event name
    async with collector as client:
        response = await client.post("/v1/batch", json={"batch": [good, bad]}, headers=kit.basic())
        assert response.json()["rejected"][0]["messageId"] == bad["messageId"]
        trace = await kit.trace_of(client, bad["messageId"])
        neighbour = await kit.trace_of(client, good["messageId"], lambda t: len(t["steps"]) >= 2)
    assert kit.steps(trace) == [("normalise", "rejected")]
    assert trace["steps"][0]["reason"] == "missing_event"
    assert trace["steps"][0]["payload"]["userId"] == "ada"
    assert trace["summary"].startswith("rejected at normalise: missing_event")
    assert kit.steps(neighbour) == [("normalise", "accepted"), ("buffer", "buffered")]


async def test_refused_requests_are_traced_by_the_messageid_they_carried(
    kit: Any, collector: Any
) -> None:
    unknown_key = {**track("Signed Up", userId="ada"), "writeKey": "wk-not-a-real-key-123"}
    limited = track("Signed Up", userId="app-user")
    async with collector as client:
        response = await client.post("/v1/track", json=unknown_key)
        assert response.status_code == 401
        response = await client.post("/v1/track", json=limited, headers=kit.basic(kit.APP_KEY))
        assert response.status_code == 429
        refused = await kit.trace_of(client, unknown_key["messageId"])
        over_limit = await kit.trace_of(client, limited["messageId"])
    assert kit.steps(refused) == [("authenticate", "rejected")]
    assert refused["sourceIds"] == ["-"]  # no source was known
    step = refused["steps"][0]
    assert step["reason"] == "invalid_write_key"
    assert step["payload"]["writeKey"] == "(hidden)"
    assert "wk-not-a-real-key-123" not in json.dumps(refused)
    assert over_limit["sourceIds"] == ["app"]
    assert over_limit["summary"].startswith("rejected at admit: rate_limited")


async def test_a_failing_sink_is_traced_attempt_by_attempt_without_its_secrets(
    kit: Any, admin_settings: Settings, collector: Any
) -> None:
    def fail(events: list[Event]) -> None:
        raise SinkError(
            f"HTTP 503 from https://deliver:hunter2-pass@crm.example.com/hook (token {kit.ADMIN_TOKEN})"
        )

    failing = capture_sink_plugin("crm", deliver=fail, max_attempts=3, max_wait_seconds=0.02)
    body = track("Order Completed", userId="ada")
    async with collector as client:
        await client.post("/v1/track", json=body, headers=kit.basic())
        async with running_worker(admin_settings, kit.DEBUGGER, (failing.plugin, "crm")):
            trace = await kit.trace_of(
                client,
                body["messageId"],
                lambda t: any(s["status"] == "dead_lettered" for s in t["sinks"]),
            )
    delivery = [step for step in trace["steps"] if step["stage"] == "deliver"]
    assert [step["status"] for step in delivery] == ["retried", "retried", "dead_lettered"]
    assert delivery[0]["detail"] == "attempt 1 of 3"
    [fate] = trace["sinks"]
    assert (fate["sink"], fate["status"], fate["failedAttempts"]) == ("crm", "dead_lettered", 2)
    text = json.dumps(trace)
    assert "hunter2-pass" not in text and kit.ADMIN_TOKEN not in text
    assert "https://(secret)@crm.example.com/hook" in delivery[0]["reason"]
    assert "dead-lettered by destination 'crm'" in trace["summary"]


async def test_an_unknown_messageid_is_a_404_that_says_why(kit: Any, client: Any) -> None:
    response = await client.get("/api/v1/admin/trace/never-sent", headers=kit.ADMIN)
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "not_found"
    assert "no trace of messageId 'never-sent'" in body["message"]
    assert "kept 7 days" in body["message"]


async def test_a_full_queue_is_counted_not_kept_and_said(
    kit: Any, admin_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNALSMITH_DEBUGGER_QUEUE_MAX_OUTCOMES", "10")
    monkeypatch.setenv("SIGNALSMITH_DEBUGGER_FLUSH_SECONDS", "0.2")
    batch = [track("", userId=f"u{n}") for n in range(30)]  # each rejected: no event name
    pm = plugin_manager(StaticKeys(kit.KEYS), kit.DEBUGGER)
    async with collector_client(admin_settings, pm=pm) as client:
        response = await client.post(
            "/v1/batch", json={"batch": batch}, headers=kit.basic(kit.WEB_KEY)
        )
        assert len(response.json()["rejected"]) == 30  # it never waits on the debugger

        async def unrecorded() -> dict[str, int]:
            return (await client.get("/debugger/api/status", headers=kit.ADMIN)).json()[
                "unrecorded"
            ]

        counted = await kit.eventually(
            unrecorded, lambda found: found.get("collector", 0) > 0, "count"
        )
    # 30 rejected outcomes: the list does not fit a queue of 10.
    assert counted == {"collector": 30}


async def test_each_message_id_is_traced_once_per_stage_even_in_one_flush(
    kit: Any, collector: Any
) -> None:
    events = [track("Order Completed", userId="ada", messageId=message_id()) for _ in range(50)]
    async with collector as client:
        await client.post("/v1/batch", json={"batch": events}, headers=kit.basic())
        for event in (events[0], events[-1]):
            trace = await kit.trace_of(client, event["messageId"], lambda t: len(t["steps"]) >= 2)
            assert kit.steps(trace) == [("normalise", "accepted"), ("buffer", "buffered")]


async def test_payloads_in_traces_are_capped_and_hide_write_keys(
    kit: Any, admin_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNALSMITH_DEBUGGER_PAYLOAD_BYTES", "2048")
    small = track("Signed Up", userId="ada", properties={"writeKey": "wk-pasted-by-mistake"})
    large = track("Signed Up", userId="bob", properties={"essay": "words " * 3000})
    pm = plugin_manager(StaticKeys(kit.KEYS), kit.DEBUGGER)
    async with kit.with_worker(admin_settings, collector_client(admin_settings, pm=pm)) as client:
        await client.post("/v1/batch", json={"batch": [small, large]}, headers=kit.basic())
        hidden = await kit.trace_of(client, small["messageId"], lambda t: len(t["steps"]) == 2)
        shortened = await kit.trace_of(client, large["messageId"], lambda t: len(t["steps"]) == 2)
    received = hidden["steps"][0]
    assert received["payload"]["properties"] == {"writeKey": "(hidden)"}
    assert "wk-pasted-by-mistake" not in json.dumps(hidden)
    received = shortened["steps"][0]
    assert received["payloadTruncated"] is True
    assert received["payloadSize"] > 18_000
    assert len(json.dumps(received["payload"], separators=(",", ":"))) <= 2048
    assert received["payload"]["properties"]["essay"].startswith("words words")
