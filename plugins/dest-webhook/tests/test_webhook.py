"""The webhook destination against real local HTTP servers that answer as receivers do: every
event through the real collector, the Redis stream, the worker's routing and mapping, and the
plugin's pooled client.

The settings fixture makes the worker's backoff milliseconds long; windows are shortened per
destination (``retry_window_seconds``) where a test needs events to be given up on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from signalsmith import Settings
from signalsmith.testing import Received, Receiver, Reply, forwarding, identify, page, track
from signalsmith_dest_webhook import plugin as webhook
from signalsmith_dest_webhook import signature

SECRET = "whsec-test-5f0e"
PLUGIN = (webhook, "dest-webhook")


def document(url: str, *, settings: str = "", extra: str = "", name: str = "hook") -> str:
    return f"""\
        version: 1
        sources:
          web: {{destinations: [{name}]}}
        destinations:
          {name}:
            type: webhook
            settings: {{url: "{url}", {settings}}}
            max_wait_seconds: 0.05
            {extra}
        """


async def wait_for(
    receiver: Receiver, predicate: Callable[[list[Any]], Any], **kw: Any
) -> list[Any]:
    return await asyncio.to_thread(
        receiver.wait_for, predicate, kw.pop("timeout", 30.0), of=kw.pop("of", receiver.payloads)
    )


# --- requests ----------------------------------------------------------------------------------


async def test_each_event_is_posted_whole_signed_with_its_headers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("CRM_TOKEN", "crm-token-1")
    sent = [track("Order Completed", userId="u-1"), identify(userId="u-1"), page("Home")]
    with Receiver() as receiver:
        text = document(
            receiver.url + "/in",
            settings='secret: "${HOOK_SECRET}", headers: {Authorization: "Bearer ${CRM_TOKEN}", '
            "X-Team: growth}",
        )
        async with forwarding(settings, PLUGIN, document=text) as run:
            await run.send(*sent)
            await wait_for(receiver, lambda p: len(p) == 3)
            await run.wait_settled("hook")
    requests = sorted(
        receiver.received(), key=lambda r: [m["messageId"] for m in sent].index(r.body["messageId"])
    )
    assert [r.body["messageId"] for r in requests] == [m["messageId"] for m in sent]
    first = requests[0]
    # The whole event, as Segment spells it (the default mapping).
    assert first.body["type"] == "track" and first.body["event"] == "Order Completed"
    assert first.body["properties"] == {"revenue": 19.99}
    assert first.body["receivedAt"] and first.body["context"]["library"]["name"]
    for request in requests:
        assert request.method == "POST" and request.path == "/in"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == "Bearer crm-token-1"
        assert request.headers["X-Team"] == "growth"
        assert request.headers["Idempotency-Key"] == request.body["messageId"]
        assert request.headers["User-Agent"].startswith("SignalSmith/")
        # The receiver checks the signature over the exact bytes it got.
        expected = "sha256=" + hmac.new(SECRET.encode(), request.raw, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers["X-Signature-256"], expected)
        assert signature(SECRET, request.raw) == expected


async def test_batches_respect_the_count_and_byte_limits(settings: Settings) -> None:
    big = "x" * 600
    sent = [track(f"Event {n}", properties={"blob": big}) for n in range(23)]
    with Receiver() as receiver:
        text = document(
            receiver.url,
            settings="batch: true, max_events_per_request: 5, max_bytes_per_request: 2600, "
            'method: PUT, secret: "${HOOK_SECRET}"',
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HOOK_SECRET", SECRET)
            async with forwarding(settings, PLUGIN, document=text) as run:
                await run.send(*sent)
                await wait_for(receiver, lambda p: len(p) == 23)
    requests = receiver.received()
    assert all(r.method == "PUT" and isinstance(r.body, list) for r in requests)
    assert all(len(r.body) <= 5 and len(r.raw) <= 2600 for r in requests)
    assert len(requests) > 23 // 5  # the bytes, not only the count, made requests
    # Chunks go out concurrently (concurrency: 4), so only each batch keeps the stream's order.
    positions = {m["messageId"]: n for n, m in enumerate(sent)}
    assert sorted(positions[p["messageId"]] for r in requests for p in r.body) == list(range(23))
    for request in requests:
        order = [positions[p["messageId"]] for p in request.body]
        assert order == sorted(order)
    for request in requests:
        assert request.headers["X-Signature-256"] == signature(SECRET, request.raw)
        assert "Idempotency-Key" not in request.headers


# --- mapping --------------------------------------------------------------------------------------


async def test_mappings_shape_the_payload_and_a_missing_field_never_fails_the_batch(
    settings: Settings,
) -> None:
    extra = """
            mapping:
              track:
                name: {"@path": "$.event"}
                user: {"@path": "$.userId"}
                plan: {"@path": "$.properties.plan"}
                currency:
                  "@if": {exists: {"@path": "$.properties.currency"}, then: {"@path": "$.properties.currency"}, else: USD}
              identify:
                email: {"@case": {operator: lower, value: {"@path": "$.traits.email"}}}
            mappings:
              - name: purchase
                trigger: 'type = "track" and event = "Order Completed"'
                mapping:
                  order: {"@path": "$.properties.order_id"}
                  skus: {"@arrayPath": ["$.properties.products", {sku: {"@path": "$.sku"}}]}
            routing:
              filters:
                - {if: all, actions: [{type: DROP_PROPERTIES, fields: {properties: [secret]}}]}
    """
    sent = [
        track(
            "Order Completed",
            properties={"order_id": "o-1", "products": [{"sku": "a"}, {"sku": "b"}]},
        ),
        track("Order Completed", properties={}),  # nothing the mapping reads
        track("Viewed", properties={"plan": "pro", "currency": "EUR", "secret": "s"}),
        track("Viewed", properties={"secret": "s"}),
        identify(traits={"email": "Ana@Example.COM"}),
        identify(traits={}),
        page("Home"),  # no mapping for pages: the whole event
    ]
    with Receiver() as receiver:
        async with forwarding(
            settings, PLUGIN, document=document(receiver.url, extra=extra)
        ) as run:
            await run.send(*sent)
            await wait_for(receiver, lambda p: len(p) == len(sent))
            await run.wait_settled("hook")
            assert await run.dead_lettered("hook") == {}
    payloads = {r.headers["Idempotency-Key"]: r.body for r in receiver.received()}
    ids = [m["messageId"] for m in sent]
    assert payloads[ids[0]] == {"order": "o-1", "skus": [{"sku": "a"}, {"sku": "b"}]}
    assert payloads[ids[1]] == {}
    assert payloads[ids[2]] == {
        "name": "Viewed",
        "user": "user-1",
        "plan": "pro",
        "currency": "EUR",
    }
    assert payloads[ids[3]] == {"name": "Viewed", "user": "user-1", "currency": "USD"}
    assert payloads[ids[4]] == {"email": "ana@example.com"}
    assert payloads[ids[5]] == {}
    assert payloads[ids[6]]["type"] == "page" and payloads[ids[6]]["name"] == "Home"


# --- answers ----------------------------------------------------------------------------------


class Script:
    """Answers each event's requests from a list of replies, one per attempt (then 200), and
    records every attempt per messageId."""

    def __init__(self, replies: dict[str, list[Reply]]) -> None:
        self.replies = replies
        self.attempts: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def __call__(self, request: Received) -> Reply | None:
        key = request.headers.get("Idempotency-Key", "")
        with self.lock:
            seen = self.attempts.setdefault(key, [])
            seen.append(time.monotonic())
            queue = self.replies.get(key, [])
            return queue[len(seen) - 1] if len(seen) <= len(queue) else None


RETRIED = [408, 423, 429, 500, 502, 503, 504, 507, 599]
REFUSED = [400, 401, 403, 404, 405, 409, 410, 413, 422, 501]


async def test_each_retry_class(settings: Settings) -> None:
    """408, 423, 429 and 5xx but 501 are retried until delivered; every other 4xx (and 501)
    is dead-lettered after one attempt, with the answer's body kept."""
    retried = {status: track(f"Retried {status}") for status in RETRIED}
    refused = {status: track(f"Refused {status}") for status in REFUSED}
    script = Script(
        {
            **{
                e["messageId"]: [Reply(status, {"error": f"busy {status}"})] * 2
                for status, e in retried.items()
            },
            **{
                e["messageId"]: [Reply(status, {"error": f"no {status}"})]
                for status, e in refused.items()
            },
        }
    )
    with Receiver(script) as receiver:
        text = document(receiver.url + "/hook", settings="concurrency: 8")
        async with forwarding(settings, PLUGIN, document=text) as run:
            await run.send(*retried.values(), *refused.values())
            await run.wait_settled("hook")
            lettered = await run.dead_lettered("hook")
    delivered = {p["messageId"] for p in receiver.payloads()}
    for status, event in retried.items():
        assert event["messageId"] in delivered, status
        assert len(script.attempts[event["messageId"]]) == 3, status
    for status, event in refused.items():
        assert event["messageId"] not in delivered
        assert len(script.attempts[event["messageId"]]) == 1, status
        assert lettered[event["messageId"]] == (
            f'HTTP {status} from {receiver.url}/hook: {{"error": "no {status}"}}'
        )
    assert set(lettered) == {e["messageId"] for e in refused.values()}


async def test_retry_after_is_honoured(settings: Settings) -> None:
    event = track("Throttled")
    script = Script({event["messageId"]: [Reply(429, {}, headers={"Retry-After": "1"})]})
    with Receiver(script) as receiver:
        async with forwarding(settings, PLUGIN, document=document(receiver.url)) as run:
            await run.send(event)
            await wait_for(receiver, lambda p: len(p) == 1)
    first, second = script.attempts[event["messageId"]]
    # The worker's own backoff is milliseconds here: the wait is the destination's.
    assert second - first >= 0.95


async def test_a_batch_refused_for_some_events_dead_letters_only_those(settings: Settings) -> None:
    """A receiver that refuses a whole batch with 400 when one event is bad: the plugin splits
    the batch until it finds the bad events; the others are delivered, and the bad ones are
    dead-lettered with the receiver's answer."""

    def strict(request: Received) -> Reply | None:
        bad = [p["messageId"] for p in request.body if p["event"] == "Bad"]
        if bad:
            return Reply(400, {"error": "invalid events", "ids": bad})
        return None

    good = [track("Good") for _ in range(14)]
    bad = [track("Bad"), track("Bad")]
    sent = good[:5] + bad[:1] + good[5:11] + bad[1:] + good[11:]
    with Receiver(strict) as receiver:
        text = document(receiver.url, settings="batch: true")
        async with forwarding(settings, PLUGIN, document=text) as run:
            await run.send(*sent)
            await run.wait_settled("hook")
            lettered = await run.dead_lettered("hook")
    delivered = [p["messageId"] for p in receiver.payloads()]
    assert sorted(delivered) == sorted(e["messageId"] for e in good)
    assert set(lettered) == {e["messageId"] for e in bad}
    for event in bad:
        assert lettered[event["messageId"]].startswith(f"HTTP 400 from {receiver.url}: ")
        assert event["messageId"] in lettered[event["messageId"]]


async def test_a_multi_status_answer_settles_each_event(settings: Settings) -> None:
    calls: list[int] = []

    def multi(request: Received) -> Reply | None:
        calls.append(len(request.body))
        if len(calls) > 1:
            return None
        results = []
        for payload in request.body:
            if payload["event"] == "Refused":
                results.append({"status": 422, "errormessage": "missing email"})
            elif payload["event"] == "Later":
                results.append({"status": 503, "error": "shard down"})
            else:
                results.append({"status": 200})
        return Reply(207, {"results": results})

    sent = [track("Fine"), track("Refused"), track("Later"), track("Fine")]
    with Receiver(multi) as receiver:
        async with forwarding(
            settings, PLUGIN, document=document(receiver.url, settings="batch: true")
        ) as run:
            await run.send(*sent)
            await run.wait_settled("hook")
            lettered = await run.dead_lettered("hook")
    assert calls == [4, 1]  # only the event the receiver asked to retry was sent again
    assert lettered == {
        sent[1]["messageId"]: f"HTTP 422 for this event from {receiver.url}: missing email"
    }


async def test_500s_for_a_while_then_recovery_deliver_every_event_once(settings: Settings) -> None:
    """ "Ten minutes" of 500s compressed to two seconds (the worker's backoff is milliseconds
    long here): every event arrives, and each exactly once, since nothing was accepted while
    the receiver failed."""
    until = time.monotonic() + 2.0
    accepted: dict[str, int] = {}
    lock = threading.Lock()

    def recovering(request: Received) -> Reply | None:
        if time.monotonic() < until:
            return Reply(500, {"error": "database down"})
        with lock:
            for payload in request.body:
                accepted[payload["messageId"]] = accepted.get(payload["messageId"], 0) + 1
        return None

    sent = [track(f"Event {n}") for n in range(40)]
    with Receiver(recovering) as receiver:
        text = document(receiver.url, settings="batch: true, max_events_per_request: 7")
        async with forwarding(settings, PLUGIN, document=text) as run:
            for start in range(0, 40, 10):
                await run.send(*sent[start : start + 10])
            await wait_for(receiver, lambda p: len(p) >= 40)
            await run.wait_settled("hook")
            assert await run.dead_lettered("hook") == {}
    assert any(not r.accepted for r in receiver.received())
    assert accepted == {e["messageId"]: 1 for e in sent}


async def test_a_hanging_destination_times_out_and_the_rest_flows(settings: Settings) -> None:
    """The receiver never answers for one event: its request times out (retried, then
    dead-lettered once its window passes), while the others are delivered meanwhile."""
    hang = track("Hang")
    others = [track(f"Fine {n}") for n in range(8)]

    def answer(request: Received) -> Reply | None:
        return Reply(hang=True) if request.body["event"] == "Hang" else None

    with Receiver(answer) as receiver:
        text = document(
            receiver.url,
            settings="timeout_seconds: 0.5, concurrency: 4",
            extra="retry_window_seconds: 2",
        )
        async with forwarding(settings, PLUGIN, document=text) as run:
            await run.send(hang, *others)
            await wait_for(receiver, lambda p: len(p) == 8)
            await run.wait_settled("hook")
            lettered = await run.dead_lettered("hook")
    assert {p["messageId"] for p in receiver.payloads()} == {e["messageId"] for e in others}
    assert list(lettered) == [hang["messageId"]]
    assert lettered[hang["messageId"]].startswith("timed out (ReadTimeout)")
    assert "retry window of 2s" in lettered[hang["messageId"]]


async def test_two_instances_are_isolated(settings: Settings) -> None:
    """One instance's destination is down (500) and another's answers: the healthy one gets
    every event while the other keeps retrying; the failing one throttles only itself."""
    with Receiver(lambda r: Reply(500, {})) as down, Receiver() as up:
        text = f"""\
            version: 1
            sources:
              web: {{destinations: [down, up]}}
            destinations:
              down: {{type: webhook, settings: {{url: "{down.url}", batch: true}}, max_wait_seconds: 0.05}}
              up: {{type: webhook, settings: {{url: "{up.url}", batch: true}}, max_wait_seconds: 0.05}}
            """
        sent = [track(f"Event {n}") for n in range(30)]
        async with forwarding(settings, PLUGIN, document=text) as run:
            for start in range(0, 30, 3):
                await run.send(*sent[start : start + 3])
            await wait_for(up, lambda p: len(p) == 30)
            await run.wait_settled("up")
            await wait_for(down, lambda r: len(r) >= 3, of=down.received)  # retrying meanwhile
            assert not await run.settled("down")
            assert down.payloads() == []
    assert [p["messageId"] for p in up.payloads()] == [e["messageId"] for e in sent]


async def test_429s_slow_the_instance_down(settings: Settings) -> None:
    """A receiver that answers 429 (no Retry-After) to a run of requests: the instance,
    unlimited until then, cuts its own rate (halved from what it was sending), and every event
    is delivered. The arithmetic of the rate is checked in the core's tests
    (test_http_delivery); how fast it recovers here depends on the machine."""
    seen: list[int] = []
    lock = threading.Lock()

    def overloaded(request: Received) -> Reply | None:
        with lock:
            seen.append(1)
            number = len(seen)
        return Reply(429, {"error": "slow down"}) if 4 < number <= 12 else None

    sent = [track(f"Event {n}") for n in range(30)]
    with Receiver(overloaded) as receiver:
        text = document(receiver.url, settings="concurrency: 8")
        async with forwarding(settings, PLUGIN, document=text) as run:
            await run.send(*sent)
            await wait_for(receiver, lambda p: len(p) == 30, timeout=60)
            rate = run.runtime.state["dest-webhook"].current("hook").rate
            assert rate.throttles >= 1
    assert sum(1 for r in receiver.received() if r.status == 429) == 8
    assert sorted(p["messageId"] for p in receiver.payloads()) == sorted(
        m["messageId"] for m in sent
    )


def test_settings_are_checked_when_the_workspace_is_applied() -> None:
    import msgspec

    from signalsmith_dest_webhook import WebhookSettings

    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.headers"):
        msgspec.convert(
            {"url": "https://x.example", "headers": {"X-Bad": "a\nb"}}, WebhookSettings, strict=True
        )
    with pytest.raises(msgspec.ValidationError, match="4000"):
        msgspec.convert(
            {"url": "https://x.example", "max_events_per_request": 5000}, WebhookSettings
        )
    assert (
        json.loads(
            msgspec.json.encode(msgspec.convert({"url": "https://x.example"}, WebhookSettings))
        )["method"]
        == "POST"
    )
