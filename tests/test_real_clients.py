"""The real analytics-python client against a real ``signalsmith serve`` process and Redis."""

from __future__ import annotations

import gzip as gzip_module
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis as sync_redis
import segment.analytics

from signalsmith.model import Alias, Event, Group, Identify, Page, Screen, Track
from signalsmith.testing import screen, track
from signalsmith.testing.stream import events_by_message_id, read_entries_sync, read_events_sync

if TYPE_CHECKING:
    from conftest import Collector

# Clock-skew correction keeps `receivedAt - timestamp` equal to how long the client held the
# event (here a fraction of a second); this only guards against an uncorrected timestamp.
NEAR = timedelta(seconds=10)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(redis_url)
    yield client
    client.close()


def now_ms(tz: timezone = UTC) -> datetime:
    """Now, at the millisecond precision analytics-python sends."""
    moment = datetime.now(tz)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def send_with_python_client(
    collector: Collector,
    write_key: str,
    calls: Callable[[segment.analytics.Client], None],
    *,
    gzip: bool,
) -> None:
    """Run ``calls`` on an asynchronous analytics-python client, flush it and check no errors."""
    errors: list[Exception] = []
    client = segment.analytics.Client(
        write_key,
        host=collector.url,
        sync_mode=False,
        gzip=gzip,
        max_retries=1,
        on_error=lambda error, batch: errors.append(error),
    )
    try:
        calls(client)
        client.flush()
    finally:
        client.shutdown()
    assert errors == [], f"{errors}\n{collector.log_tail()}"


def mid() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_analytics_python_every_call(
    collector: Collector,
    write_key: str,
    redis_client: sync_redis.Redis,
    key_prefix: str,
    gzip: bool,
) -> None:
    user = f"py-user-{uuid.uuid4().hex[:8]}"
    ids = {kind: mid() for kind in ("track", "identify", "page", "screen", "group", "alias")}
    moments = {kind: now_ms() for kind in ids}
    # A device in another zone: python sends its offset (+02:00) and the server converts.
    moments["identify"] = now_ms(timezone(timedelta(hours=2)))

    def calls(client: segment.analytics.Client) -> None:
        client.track(
            user_id=user,
            event="Order Completed",
            properties={"revenue": 19.99, "products": [{"sku": "s1", "qty": 2}]},
            timestamp=moments["track"],
            message_id=ids["track"],
        )
        client.identify(
            user_id=user,
            traits={"email": "py@example.com", "plan": "pro"},
            timestamp=moments["identify"],
            message_id=ids["identify"],
        )
        client.page(
            user_id=user,
            category="Docs",
            name="Quickstart",
            properties={"url": "https://example.com/docs"},
            timestamp=moments["page"],
            message_id=ids["page"],
        )
        client.screen(
            user_id=user,
            name="Home",
            properties={"tab": 1},
            timestamp=moments["screen"],
            message_id=ids["screen"],
        )
        client.group(
            user_id=user,
            group_id="org-1",
            traits={"name": "Acme", "employees": 40},
            timestamp=moments["group"],
            message_id=ids["group"],
        )
        client.alias(
            previous_id="anon-123",
            user_id=user,
            timestamp=moments["alias"],
            message_id=ids["alias"],
        )

    before = datetime.now(UTC)
    send_with_python_client(collector, write_key, calls, gzip=gzip)
    after = datetime.now(UTC)

    grouped = events_by_message_id(read_events_sync(redis_client, key_prefix))
    assert set(grouped) == set(ids.values())
    assert all(len(copies) == 1 for copies in grouped.values()), grouped
    events: dict[str, Any] = {kind: grouped[ids[kind]][0] for kind in ids}

    t: Track = events["track"]
    assert (t.type, t.event) == ("track", "Order Completed")
    assert t.properties == {"revenue": 19.99, "products": [{"sku": "s1", "qty": 2}]}
    i: Identify = events["identify"]
    assert i.type == "identify"
    assert i.traits == {"email": "py@example.com", "plan": "pro"}
    p: Page = events["page"]
    assert (p.type, p.name, p.category) == ("page", "Quickstart", "Docs")
    assert p.properties == {"url": "https://example.com/docs"}
    s: Screen = events["screen"]
    assert (s.type, s.name, s.category, s.properties) == ("screen", "Home", None, {"tab": 1})
    g: Group = events["group"]
    assert (g.type, g.group_id, g.traits) == ("group", "org-1", {"name": "Acme", "employees": 40})
    a: Alias = events["alias"]
    assert (a.type, a.previous_id) == ("alias", "anon-123")

    for kind, event in events.items():
        assert event.user_id == user, kind
        assert event.anonymous_id is None, kind  # python sends an explicit null
        assert event.project_id == "src-system-test"
        assert event.context["library"]["name"] == "analytics-python"
        assert before <= event.received_at <= after, kind
        assert event.original_timestamp == moments[kind], kind
        assert event.sent_at is not None and before <= event.sent_at <= after, kind
        assert event.timestamp == event.received_at - (event.sent_at - event.original_timestamp)
        assert abs(event.timestamp - event.received_at) < NEAR, kind

    for entry in read_entries_sync(redis_client, key_prefix):
        assert write_key.encode() not in entry.payload


def test_analytics_python_timestamp_far_in_the_past(
    collector: Collector, write_key: str, redis_client: sync_redis.Redis, key_prefix: str
) -> None:
    """A historical event keeps its age: timestamp = receivedAt - (sentAt - originalTimestamp)."""
    long_ago = datetime(2020, 1, 15, 8, 30, 0, 125_000, tzinfo=UTC)
    message_id = mid()

    def calls(client: segment.analytics.Client) -> None:
        client.track(
            user_id="py-history",
            event="Legacy Import",
            timestamp=long_ago,
            message_id=message_id,
        )

    before = datetime.now(UTC)
    send_with_python_client(collector, write_key, calls, gzip=False)
    after = datetime.now(UTC)

    (event,) = read_events_sync(redis_client, key_prefix)
    assert event.message_id == message_id
    assert event.original_timestamp == long_ago
    assert event.sent_at is not None
    # sentAt and receivedAt are both read from this host's clock, inside [before, after].
    assert before <= event.sent_at <= after
    assert before <= event.received_at <= after
    assert event.timestamp == event.received_at - (event.sent_at - long_ago)
    # So the corrected timestamp is the original plus only the time in transit.
    assert long_ago - (after - before) <= event.timestamp <= long_ago + (after - before)
    assert event.received_at - event.timestamp > timedelta(days=365)


def test_python_client_retry_is_buffered_once(
    collector: Collector, write_key: str, redis_client: sync_redis.Redis, key_prefix: str
) -> None:
    """analytics-python resends the same messageIds on retry; the second copy is a duplicate."""
    message_id = mid()
    for _ in range(2):
        send_with_python_client(
            collector,
            write_key,
            lambda client: client.track(user_id="u", event="Twice", message_id=message_id),
            gzip=False,
        )
    events = read_events_sync(redis_client, key_prefix)
    assert [event.message_id for event in events] == [message_id]


def test_chunked_gzip_import_over_real_http(
    collector: Collector, write_key: str, redis_client: sync_redis.Redis, key_prefix: str
) -> None:
    """What classic Android sends: gzip, streamed chunked with no Content-Length, Basic auth."""
    messages = [screen(), track()]
    body = gzip_module.compress(json.dumps({"batch": messages}).encode())

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 50):
            yield body[start : start + 50]

    response = httpx.post(
        f"{collector.url}/v1/import",
        content=chunks(),
        auth=(write_key, ""),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json; utf-8"},
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    events: list[Event] = read_events_sync(redis_client, key_prefix)
    assert [e.message_id for e in events] == [m["messageId"] for m in messages]
