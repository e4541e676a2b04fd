"""The HTTP side destination plugins share: how answers are classified, Retry-After, the
adaptive rate, chunking, and one client per destination instance that follows the workspace.

The rate's arithmetic runs on an injected clock (its own, not a mock of anything under test);
the instances run against the real Redis and workspace versions.
"""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from signalsmith.config import Settings
from signalsmith.http_delivery import (
    AdaptiveRate,
    DestinationInstances,
    Prepared,
    chunked,
    retry_after_seconds,
    status_outcome,
)
from signalsmith.model import Track
from signalsmith.testing import message_id, runtime_for, workspace_types
from signalsmith.workspace import DocumentText
from signalsmith.workspace.operations import apply


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        *((s, "delivered") for s in (200, 201, 202, 204, 207)),
        *((s, "retry") for s in (408, 423, 429, 500, 502, 503, 504, 505, 507, 511, 598, 599)),
        *((s, "refused") for s in (300, 301, 400, 401, 403, 404, 409, 413, 422, 425, 451, 501)),
    ],
)
def test_statuses_are_classified_as_segments_actions_framework_does(
    status: int, outcome: str
) -> None:
    assert status_outcome(status) == outcome


def test_retry_after_takes_seconds_or_a_date_within_bounds() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds("0") == 1.0  # never hammer
    assert retry_after_seconds("86400") == 300.0  # never wait for ever
    date = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert retry_after_seconds(date, now=now) == 42.0
    assert (
        retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 1.0
    )
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("nan") is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_the_rate_halves_on_429s_and_recovers_additively() -> None:
    clock = Clock()
    rate = AdaptiveRate(increase=1.0, clock=clock, sleep=clock.sleep)
    # Unlimited: 20 requests in one second go out at once.
    for _ in range(20):
        await rate.acquire()
    assert clock.slept == [] and rate.limit is None
    rate.throttled()
    assert rate.limit == 10.0  # half of what was being sent
    rate.throttled()  # the same burst: once per second at most
    assert rate.limit == 10.0
    # Now paced: ten a second.
    clock.slept.clear()
    for _ in range(10):
        await rate.acquire()
    assert sum(clock.slept) == pytest.approx(1.0, abs=0.11)
    clock.now += 0.5
    rate.throttled()
    assert rate.limit == 5.0
    # Success adds one request per second for each second since the last change...
    clock.now += 3
    rate.succeeded()
    assert rate.limit == pytest.approx(8.0)
    clock.now += 10
    rate.succeeded()
    assert rate.limit == pytest.approx(18.0)
    clock.now += 3
    rate.succeeded()
    # ... and back at the rate that was throttled (20 a second), the limit is lifted.
    assert rate.limit is None


async def test_a_ceiling_caps_the_rate_and_the_floor_keeps_it_moving() -> None:
    clock = Clock()
    rate = AdaptiveRate(4.0, floor=0.5, clock=clock, sleep=clock.sleep)
    for _ in range(8):
        await rate.acquire()
    assert sum(clock.slept) == pytest.approx(1.75)
    for _ in range(6):
        clock.now += 1.5
        rate.throttled()
    assert rate.limit == 0.5
    clock.now += 100
    rate.succeeded()
    assert rate.limit == 4.0


def _prepared(sizes: list[int]) -> list[Prepared]:
    now = datetime.now(UTC)
    event = Track(message_id=message_id(), received_at=now, timestamp=now, event="E")
    return [Prepared(event, b"x" * size) for size in sizes]


def test_chunks_keep_order_and_stay_within_count_and_bytes() -> None:
    items = _prepared([10] * 7)
    assert [len(c) for c in chunked(items, max_events=3, max_bytes=10_000)] == [3, 3, 1]
    # overhead 2 + 10 + (1 + 10) * n <= 35  ->  3 per chunk
    assert [len(c) for c in chunked(items, max_events=100, max_bytes=35)] == [3, 3, 1]
    big = _prepared([10, 50, 10])
    assert [len(c) for c in chunked(big, max_events=100, max_bytes=30)] == [1, 1, 1]
    flattened = [item for chunk in chunked(items, max_events=2, max_bytes=100) for item in chunk]
    assert flattened == items


class Opened:
    def __init__(self, url: str) -> None:
        self.url = url
        self.closed = False


async def test_one_object_per_instance_closed_when_the_workspace_drops_or_changes_it(
    settings: Settings,
) -> None:
    def document(**urls: str) -> str:
        declared = "\n".join(
            f"  {name}: {{type: http-post, settings: {{url: '{url}'}}}}"
            for name, url in urls.items()
        )
        listed = ", ".join(urls)
        return f"version: 1\nsources:\n  web: {{destinations: [{listed}]}}\ndestinations:\n{declared}\n"

    opened: list[Opened] = []

    def build(sink):  # type: ignore[no-untyped-def]
        opened.append(Opened(sink.settings.url))
        return opened[-1]

    async def close(value: Opened) -> None:
        value.closed = True

    async with runtime_for(settings, workspace_types) as runtime:
        instances = DestinationInstances(runtime, build, close)
        store, registry = runtime.workspace.store, runtime.workspace.registry

        async def use(version: str) -> None:
            await apply(
                store, registry, DocumentText(text=textwrap.dedent(version)), applied_by="t"
            )
            await runtime.workspace.refresh()

        await use(document(a="https://a.example/1", b="https://b.example/1"))
        sinks = {sink.name: sink for sink in runtime.workspace.active.destinations}
        async with instances.use(sinks["a"]) as first, instances.use(sinks["a"]) as again:
            assert first is again  # one per instance
        async with instances.use(sinks["b"]) as b:
            pass
        # A changed instance: the old object is closed once its call in flight ends.
        async with instances.use(sinks["a"]) as in_flight:
            await use(document(a="https://a.example/2", b="https://b.example/1"))
            assert not in_flight.closed
        assert in_flight.closed and not b.closed
        sinks = {sink.name: sink for sink in runtime.workspace.active.destinations}
        async with instances.use(sinks["a"]) as second:
            assert second.url == "https://a.example/2" and second is not first
        # A removed instance: closed at once.
        await use(document(a="https://a.example/2"))
        await asyncio.sleep(0)
        assert b.closed and not second.closed
        await instances.aclose()
        assert second.closed
    assert [o.url for o in opened] == [
        "https://a.example/1",
        "https://b.example/1",
        "https://a.example/2",
    ]
