"""The Segment-compatible forward against real local HTTP servers answering as Segment,
RudderStack and SignalSmith do (`shared/reference/destinations.md` section 6): every event
through the real collector, the Redis stream and the worker.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from signalsmith import Settings
from signalsmith.testing import Received, Receiver, Reply, forwarding, identify, page, track
from signalsmith_dest_segment import LIMITS
from signalsmith_dest_segment import plugin as segment

PLUGIN = (segment, "dest-segment")
WRITE_KEY = "wk-downstream-3c1d"


@pytest.fixture(autouse=True)
def _write_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNSTREAM_KEY", WRITE_KEY)


def document(url: str, *, settings: str = "", extra: str = "") -> str:
    return f"""\
        version: 1
        sources:
          web: {{destinations: [forward]}}
        destinations:
          forward:
            type: segment
            settings: {{url: "{url}/v1/batch", write_key: "${{DOWNSTREAM_KEY}}", {settings}}}
            max_wait_seconds: 0.05
            {extra}
        """


class Segmentish:
    """A receiver that keeps what it accepted by messageId, as Segment and its peers
    deduplicate, and counts the copies it was sent."""

    def __init__(self, answer: Callable[[Received], Reply | None] | None = None) -> None:
        self.answer = answer
        self.copies: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, request: Received) -> Reply | None:
        reply = self.answer(request) if self.answer else None
        if reply is None or 200 <= reply.status < 300:
            with self.lock:
                for event in request.events:
                    self.copies[event["messageId"]] = self.copies.get(event["messageId"], 0) + 1
        return reply


async def wait_for(
    receiver: Receiver, predicate: Callable[[list[Any]], Any], within: float = 30
) -> Any:
    return await asyncio.to_thread(receiver.wait_for, predicate, within)


async def test_events_are_forwarded_in_segment_batches_keeping_ids_and_times(
    settings: Settings,
) -> None:
    sent = [
        track("Order Completed", userId="u-1", timestamp="2026-11-30T10:00:00.000Z"),
        identify(userId="u-1", traits={"plan": "pro"}),
    ]
    with Receiver() as receiver:
        async with forwarding(settings, PLUGIN, document=document(receiver.url)) as run:
            await run.send(*sent)
            await wait_for(receiver, lambda e: len(e) == 2)
    [request] = receiver.received()
    assert request.method == "POST" and request.path == "/v1/batch"
    assert (
        request.headers["Authorization"]
        == "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    )
    assert request.headers["Content-Type"] == "application/json"
    assert set(request.body) == {"batch", "sentAt"}
    order, who = request.body["batch"]
    assert [e["messageId"] for e in request.body["batch"]] == [m["messageId"] for m in sent]
    assert order["type"] == "track" and order["event"] == "Order Completed"
    # The event's own time goes along; what the receiver sets itself does not.
    assert order["timestamp"].startswith("2026-11-30T10:00:00")
    for field in ("receivedAt", "sentAt", "originalTimestamp", "projectId", "writeKey"):
        assert field not in order
    assert order["context"]["library"]["name"] == "signalsmith-tests"
    assert who["type"] == "identify" and who["traits"] == {"plan": "pro"}


async def test_batches_stay_within_the_smallest_limits_and_oversize_events_are_dead_lettered(
    settings: Settings,
) -> None:
    blob = "y" * 9000  # ~9 KB per event: 50 of them do not fit in 450 KB... nor in 100 KB
    events = [track(f"Event {n}", properties={"blob": blob}) for n in range(30)]
    huge = track("Huge", properties={"blob": "z" * (LIMITS.event_bytes + 10)})
    # This collector takes messages up to 64 KB; the receiver takes 32 KB.
    roomy = msgspec.structs.replace(settings, max_message_bytes=64 * 1024)
    with Receiver() as receiver:
        text = document(receiver.url, settings="max_bytes_per_request: 100000, gzip: true")
        async with forwarding(roomy, PLUGIN, document=text) as run:
            await run.send(*events[:15], huge, *events[15:])
            await wait_for(receiver, lambda e: len(e) == 30)
            await run.wait_settled("forward")
            lettered = await run.dead_lettered("forward")
    requests = receiver.received()
    assert len(requests) >= 3
    for request in requests:
        assert request.headers["Content-Encoding"] == "gzip"
        assert len(request.body["batch"]) <= 500
        assert len(gzip.decompress(request.raw)) <= 100_000
    # Requests go out concurrently (concurrency 4): each keeps the stream's order.
    position = {m["messageId"]: n for n, m in enumerate(events)}
    assert sorted(position[e["messageId"]] for e in receiver.events()) == list(range(30))
    for request in requests:
        order = [position[e["messageId"]] for e in request.body["batch"]]
        assert order == sorted(order)
    assert list(lettered) == [huge["messageId"]]
    assert (
        "Segment-compatible APIs take at most 32768 bytes per event" in lettered[huge["messageId"]]
    )


def test_the_limits_are_the_smallest_of_segment_rudderstack_and_signalsmith() -> None:
    from signalsmith_dest_segment import SegmentSettings

    assert (LIMITS.event_bytes, LIMITS.request_bytes, LIMITS.request_events) == (
        32768,
        500_000,
        2500,
    )
    base = {"write_key": "${K}"}
    with pytest.raises(msgspec.ValidationError, match="2500"):
        msgspec.convert({**base, "max_events_per_request": 2501}, SegmentSettings)
    with pytest.raises(msgspec.ValidationError, match="500000"):
        msgspec.convert({**base, "max_bytes_per_request": 600_000}, SegmentSettings)
    defaults = msgspec.convert(base, SegmentSettings)
    assert defaults.url == "https://api.segment.io/v1/batch"
    assert (defaults.max_events_per_request, defaults.max_bytes_per_request) == (500, 450_000)


async def test_a_batch_refused_for_some_events_dead_letters_only_those(settings: Settings) -> None:
    """RudderStack refuses a whole batch with 400 when one event is bad (Segment does for a
    batch it cannot take): the forward splits until it finds them; the rest get through."""

    def rudder(request: Received) -> Reply | None:
        if any(e.get("properties", {}).get("bad") for e in request.events):
            return Reply(400, "Invalid request: event has neither userId nor anonymousId")
        return Reply(200, "OK")

    good = [track(f"Good {n}") for n in range(12)]
    bad = [track("Bad", properties={"bad": True}) for _ in range(2)]
    with Receiver(rudder) as receiver:
        async with forwarding(settings, PLUGIN, document=document(receiver.url)) as run:
            await run.send(*good[:4], bad[0], *good[4:9], bad[1], *good[9:])
            await run.wait_settled("forward")
            lettered = await run.dead_lettered("forward")
    assert sorted(e["messageId"] for e in receiver.events()) == sorted(m["messageId"] for m in good)
    assert set(lettered) == {m["messageId"] for m in bad}
    assert all(
        reason == f"HTTP 400 from {receiver.url}/v1/batch: Invalid request: event has neither "
        "userId nor anonymousId"
        for reason in lettered.values()
    )


async def test_events_another_signalsmith_rejects_in_its_200_are_dead_lettered(
    settings: Settings,
) -> None:
    def signalsmith(request: Received) -> Reply | None:
        rejected = [
            {
                "index": index,
                "messageId": e["messageId"],
                "code": "invalid_message",
                "message": "event must be a string",
            }
            for index, e in enumerate(request.events)
            if e.get("properties", {}).get("refuse")
        ]
        accepted = len(request.events) - len(rejected)
        return Reply(
            200, {"success": True, "accepted": accepted, "rejected": rejected, "dropped": []}
        )

    fine = [track("Fine") for _ in range(3)]
    refused = track("Refused", properties={"refuse": True})
    with Receiver(signalsmith) as receiver:
        async with forwarding(settings, PLUGIN, document=document(receiver.url)) as run:
            await run.send(fine[0], refused, *fine[1:])
            await run.wait_settled("forward")
            lettered = await run.dead_lettered("forward")
    assert len(receiver.received()) == 1  # nothing is sent again
    assert lettered == {
        refused[
            "messageId"
        ]: f"refused by {receiver.url}/v1/batch: invalid_message: event must be a string"
    }


async def test_500s_then_recovery_deliver_every_event_and_the_receiver_keeps_each_once(
    settings: Settings,
) -> None:
    """Two seconds of 500s (standing in for ten minutes: the worker's backoff is milliseconds
    long here), and answers lost after the receiver took the batch (it stores, then answers too
    late for the forward's timeout): the forward sends again with the same messageIds, and the
    receiver, which deduplicates on them, keeps every event once."""
    outage_until = time.monotonic() + 2.0
    slow = {"left": 2}

    def flaky(request: Received) -> Reply | None:
        if time.monotonic() < outage_until:
            return Reply(500, {"error": "internal"})
        if slow["left"] > 0:
            slow["left"] -= 1
            return Reply(200, {"success": True}, delay=2.0)  # stored, answered too late
        return None

    receiving = Segmentish(flaky)
    sent = [track(f"Event {n}") for n in range(60)]
    with Receiver(receiving) as receiver:
        text = document(receiver.url, settings="max_events_per_request: 20, timeout_seconds: 0.5")
        async with forwarding(settings, PLUGIN, document=text) as run:
            for start in range(0, 60, 15):
                await run.send(*sent[start : start + 15])
            await asyncio.to_thread(receiver.wait_for, lambda _: len(receiving.copies) == 60, 60)
            await run.wait_settled("forward")
            assert await run.dead_lettered("forward") == {}
    assert set(receiving.copies) == {m["messageId"] for m in sent}
    assert any(count > 1 for count in receiving.copies.values())  # sent twice: answer lost
    assert any(r.status == 500 for r in receiver.received())


async def test_429_with_retry_after_and_a_bad_write_key(settings: Settings) -> None:
    throttled = {"left": 1}

    def segment_api(request: Received) -> Reply | None:
        if (
            request.headers["Authorization"]
            != "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        ):
            return Reply(401, {"code": "invalid_write_key", "message": "write key not recognised"})
        if throttled["left"]:
            throttled["left"] -= 1
            return Reply(
                429,
                {"code": "rate_limited"},
                headers={"Retry-After": "1", "X-RateLimit-Reset": "1"},
            )
        return None

    event = track("Once")
    with Receiver(segment_api) as receiver:
        async with forwarding(settings, PLUGIN, document=document(receiver.url)) as run:
            await run.send(event)
            await wait_for(receiver, lambda e: len(e) == 1)
            first, second = receiver.received()
            assert second.at - first.at >= 0.95  # the receiver's Retry-After, not the backoff
            assert first.status == 429 and second.status == 200
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("DOWNSTREAM_KEY", "wk-revoked")
                await run.apply(document(receiver.url, extra="description: key rotated"))
            wrong = track("Wrong key")
            await run.send(wrong)
            await run.wait_settled("forward")
            lettered = await run.dead_lettered("forward")
    assert lettered == {
        wrong[
            "messageId"
        ]: f'HTTP 401 from {receiver.url}/v1/batch: {{"code": "invalid_write_key", '
        '"message": "write key not recognised"}'
    }


async def test_a_mapping_reshapes_forwarded_events(settings: Settings) -> None:
    extra = """
            mapping:
              track:
                "@merge":
                  objects:
                    - {"@path": "$."}
                    - event: {"@template": "web {{event}}"}
                      properties: {"@flatten": {value: {"@path": "$.properties"}, separator: "_"}}
                  direction: right
              identify: {"@path": "$.traits"}
              page: {"@path": "$.name"}
    """
    sent = [
        track("Signed Up", properties={"plan": {"tier": "pro"}}),
        identify(traits={"a": 1}),
        page("Home"),
    ]
    with Receiver() as receiver:
        async with forwarding(
            settings, PLUGIN, document=document(receiver.url, extra=extra)
        ) as run:
            await run.send(*sent)
            await wait_for(receiver, lambda e: len(e) == 2)
            await run.wait_settled("forward")
            lettered = await run.dead_lettered("forward")
    forwarded, who = receiver.events()
    assert forwarded["event"] == "web Signed Up"
    assert forwarded["properties"] == {"plan_tier": "pro"}
    assert forwarded["messageId"] == sent[0]["messageId"] and forwarded["type"] == "track"
    # An object without type or messageId gets them from the event.
    assert who == {"a": 1, "type": "identify", "messageId": sent[1]["messageId"]}
    # A mapping that makes no object is not a message: dead-lettered, never sent.
    assert lettered == {
        sent[2]["messageId"]: "the mapping did not make an object (a Segment message) of this event"
    }
