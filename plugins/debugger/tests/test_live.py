"""The live feed: filters, scopes, backfill, and a viewer who does not keep up. The feed's reader on
real Redis, and the Server-Sent Events of a real `signalsmith serve`."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from signalsmith import Event, Outcome, Settings
from signalsmith.testing import runtime_for, track
from signalsmith_debugger.access import Viewer
from signalsmith_debugger.live import Feed, Hub, LiveFilter, serve_feed
from signalsmith_debugger.state import NAME, DebuggerState

ADMIN = Viewer(name="admin", sources=None)


@pytest.fixture
async def debugger(admin_settings: Settings, kit: Any) -> AsyncIterator[DebuggerState]:
    async with runtime_for(admin_settings, kit.DEBUGGER, role="collector") as runtime:
        yield runtime.attached(NAME, DebuggerState)


def event(name: str, user: str, source: str = "web", **fields: Any) -> Event:
    return msgspec.convert(
        {
            **track(name, userId=user, **fields),
            "receivedAt": "2026-03-01T12:00:00Z",
            "projectId": source,
        },
        Event,
    )


async def observe(state: DebuggerState, *outcomes: tuple[Event, str, str]) -> None:
    """Report (event, stage, status) outcomes as the pipeline would, and write them."""
    state.recorder.take(  # type: ignore[union-attr]
        [
            Outcome(
                stage=stage,
                status=status,
                message_id=e.message_id,
                source_id=e.project_id,
                sink="hook" if stage == "deliver" else None,
                event=e,
            )
            for e, stage, status in outcomes
        ]
    )
    await state.recorder.flush()  # type: ignore[union-attr]


async def feed_for(state: DebuggerState, viewer: Viewer = ADMIN, **wanted: Any) -> Feed:
    feed = Feed(
        state.recorder.runtime.redis,  # type: ignore[union-attr]
        state.keys,
        state.config,
        viewer,
        LiveFilter(**wanted),
        backfill=0,
    )
    await feed.start()
    return feed


async def read(feed: Feed, count: int) -> list[Any]:
    """Read the streams until ``count`` records are buffered (or skipped); take them."""
    deadline = time.monotonic() + 10
    skipped = feed.skipped
    while len(feed.buffer) + feed.skipped - skipped < count and time.monotonic() < deadline:
        feed._sources_at = 0.0  # pick up sources that appeared since
        await feed.read_once()
    return feed.take(10_000)


async def test_filters_by_user_type_and_event_name(debugger: DebuggerState) -> None:
    await observe(debugger)  # nothing yet: the feed starts from now
    ada = event("Order Completed", "ada")
    bob = event("Order Completed", "bob")
    anonymous = event("Product Viewed", "x", anonymousId="ada")
    feed = await feed_for(debugger, user="ada")
    named = await feed_for(debugger, event="order *")
    partial = await feed_for(debugger, event="viewed")
    await observe(debugger, *((e, "normalise", "accepted") for e in (ada, bob, anonymous)))
    assert {r.message_id for r in await read(feed, 2)} == {ada.message_id, anonymous.message_id}
    assert {r.message_id for r in await read(named, 2)} == {ada.message_id, bob.message_id}
    assert [r.message_id for r in await read(partial, 1)] == [anonymous.message_id]


async def test_a_status_filter_follows_the_event_it_caught(debugger: DebuggerState) -> None:
    failing, fine = event("Order Completed", "ada"), event("Order Completed", "bob")
    feed = await feed_for(debugger, statuses=frozenset({"retried", "dead_lettered"}))
    await observe(
        debugger,
        (failing, "normalise", "accepted"),
        (fine, "normalise", "accepted"),
        (fine, "deliver", "delivered"),
        (failing, "deliver", "retried"),
        (failing, "deliver", "delivered"),  # its later records come along
    )
    seen = await read(feed, 2)
    assert [(r.message_id, r.status) for r in seen] == [
        (failing.message_id, "retried"),
        (failing.message_id, "delivered"),
    ]


async def test_a_scoped_viewer_reads_only_its_sources(debugger: DebuggerState) -> None:
    web, app = event("A", "u", source="web"), event("B", "u", source="app")
    await observe(debugger, (web, "normalise", "accepted"), (app, "normalise", "accepted"))
    scoped = Viewer(name="team-web", sources=frozenset({"web"}))
    feed = await feed_for(debugger, scoped)
    assert await feed.sources() == ["web"]
    everything = await feed_for(debugger)
    assert await everything.sources() == ["app", "web"]
    await observe(debugger, (web, "buffer", "buffered"), (app, "buffer", "buffered"))
    assert {r.source_id for r in await read(feed, 1)} == {"web"}


async def test_the_backfill_shows_the_newest_matching_records(debugger: DebuggerState) -> None:
    earlier = [event("Order Completed", f"u{n}") for n in range(30)]
    await observe(debugger, *((e, "normalise", "accepted") for e in earlier))
    feed = Feed(
        debugger.recorder.runtime.redis,  # type: ignore[union-attr]
        debugger.keys,
        debugger.config,
        ADMIN,
        LiveFilter(),
        backfill=10,
    )
    backfill = await feed.start()
    assert [r.message_id for r in backfill] == [e.message_id for e in earlier[-10:]]
    later = event("Order Completed", "late")
    await observe(debugger, (later, "normalise", "accepted"))
    assert [r.message_id for r in await read(feed, 1)] == [later.message_id]  # nothing twice


async def test_the_backfill_reads_back_as_far_as_it_needs(debugger: DebuggerState) -> None:
    earlier = [event("Order Completed", f"u{n}") for n in range(70)]
    for e in earlier:  # each in a stream entry of its own: more than a page of them
        await observe(debugger, (e, "normalise", "accepted"))
    feed = Feed(
        debugger.recorder.runtime.redis,  # type: ignore[union-attr]
        debugger.keys,
        debugger.config,
        ADMIN,
        LiveFilter(user="u3"),
        backfill=100,
    )
    backfill = await feed.start()
    assert [r.message_id for r in backfill] == [earlier[3].message_id]
    everything = Feed(
        debugger.recorder.runtime.redis,  # type: ignore[union-attr]
        debugger.keys,
        debugger.config,
        ADMIN,
        LiveFilter(),
        backfill=100,
    )
    assert [r.message_id for r in await everything.start()] == [e.message_id for e in earlier]


async def test_a_viewer_who_does_not_read_is_skipped_and_counted(
    debugger: DebuggerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = await feed_for(debugger)
    feed.config = msgspec.structs.replace(debugger.config, viewer_buffer=5)
    events = [event("Order Completed", f"u{n}") for n in range(20)]
    await observe(debugger, *((e, "normalise", "accepted") for e in events))
    await read(feed, 20)  # taken only once all were offered: 5 kept, 15 skipped
    assert feed.skipped == 15
    # The viewer reads again: the next records reach it.
    more = event("Order Completed", "again")
    await observe(debugger, (more, "normalise", "accepted"))
    assert [r.message_id for r in await read(feed, 1)] == [more.message_id]


async def test_a_revoked_token_ends_the_feed(
    debugger: DebuggerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signalsmith_debugger.live as live

    monkeypatch.setattr(live, "RECHECK_EVERY_SECONDS", 0.0)
    feed = await feed_for(debugger, Viewer(name="team", sources=frozenset({"web"})))
    allowed = [True]

    async def still_allowed() -> bool:
        return allowed[0]

    hub = Hub(debugger.config)
    messages = serve_feed(hub, feed, still_allowed)
    first = await anext(messages)
    assert first.event == "hello"
    assert len(hub.feeds) == 1
    allowed[0] = False
    seen = [await anext(messages)]
    while seen[-1].event != "end":
        seen.append(await anext(messages))
    assert "revoked" in json.loads(seen[-1].data)["reason"]
    with pytest.raises(StopAsyncIteration):
        await anext(messages)
    assert hub.feeds == set()


# --- over HTTP, from a real server ----------------------------------------------------------


def sse_messages(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def send_batches(url: str, key: str, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 100):
        response = httpx.post(
            f"{url}/v1/batch", json={"batch": events[start : start + 100]}, auth=(key, "")
        )
        assert response.status_code == 200, response.text


def test_the_live_feed_over_server_sent_events(serve: Callable[..., Any], kit: Any) -> None:
    server = serve()
    ada = track("Order Completed", userId="ada")
    bob = track("Order Completed", userId="bob")
    headers = {**kit.ADMIN, "Accept": "text/event-stream"}
    with httpx.stream(
        "GET", f"{server.url}/debugger/api/live?user=ada", headers=headers, timeout=15
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(response.iter_lines())
        assert next(messages)[0] == "hello"
        send_batches(server.url, kit.WEB_KEY, [bob, ada])
        seen: list[dict[str, Any]] = []
        stats: list[dict[str, Any]] = []
        for name, data in messages:
            if name == "records":
                seen += data
            if name == "stats":
                stats.append(data["sources"])
            if {r["status"] for r in seen} >= {"accepted", "buffered"} and any(
                s.get("web", {}).get("events") for s in stats
            ):
                break
    # ada's records only: the one that shows the event names her, the later one follows it.
    assert {r["messageId"] for r in seen} == {ada["messageId"]}
    assert [r.get("userId") for r in seen] == ["ada", None]
    assert "payload" not in seen[0]  # the event itself is in its trace
    assert sum(s.get("web", {}).get("events", 0) for s in stats) == 2  # the chart counts both


def test_the_live_feed_refuses_what_it_cannot_serve(serve: Callable[..., Any], kit: Any) -> None:
    server = serve(SIGNALSMITH_DEBUGGER_MAX_VIEWERS="1")
    created = httpx.post(
        f"{server.url}/api/v1/admin/debugger/tokens", json={"sources": ["web"]}, headers=kit.ADMIN
    ).json()
    scoped = kit.bearer(created["token"])
    live = f"{server.url}/debugger/api/live"
    assert httpx.get(f"{live}?source=app", headers=scoped).status_code == 403
    assert (
        httpx.get(f"{live}?status=lost", headers=kit.ADMIN)
        .json()["message"]
        .startswith("unknown status 'lost'")
    )
    assert httpx.get(f"{live}?type=click", headers=kit.ADMIN).status_code == 400
    with httpx.stream("GET", live, headers=kit.ADMIN, timeout=15) as first:
        lines = first.iter_lines()  # kept: a discarded iterator closes the response
        assert next(lines) == "event: hello"
        busy = httpx.get(live, headers=kit.ADMIN)
        assert busy.status_code == 503
        assert "SIGNALSMITH_DEBUGGER_MAX_VIEWERS" in busy.json()["message"]


def test_a_stalled_viewer_never_holds_up_ingestion_and_is_told_what_it_missed(
    serve: Callable[..., Any], kit: Any
) -> None:
    server = serve(SIGNALSMITH_DEBUGGER_VIEWER_BUFFER="50")
    # A viewer that reads its headers and then nothing: a small receive window, never drained.
    viewer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    viewer.connect(("127.0.0.1", server.port))
    viewer.sendall(
        b"GET /debugger/api/live?backfill=0 HTTP/1.1\r\nHost: test\r\n"
        + f"Authorization: Bearer {kit.ADMIN_TOKEN}\r\n\r\n".encode()
    )
    viewer.settimeout(10)
    head = viewer.recv(1024)
    assert head.startswith(b"HTTP/1.1 200")

    def viewers() -> list[dict[str, Any]]:
        return httpx.get(f"{server.url}/debugger/api/viewers", headers=kit.ADMIN).json()

    deadline = time.monotonic() + 20
    while not viewers() or not viewers()[0]["sources"]:
        assert time.monotonic() < deadline, "the viewer never joined the feed"
        send_batches(server.url, kit.WEB_KEY, [track("Warm Up", userId="w")])
        time.sleep(0.2)
    # Far more than the socket and the viewer's buffer hold: every request is still a 200.
    events = [
        track("Order Completed", userId=f"u{n}", properties={"note": "n" * 200})
        for n in range(3000)
    ]
    send_batches(server.url, kit.WEB_KEY, events)
    while True:
        [stalled] = viewers()
        if stalled["skipped"] > 0:
            break
        assert time.monotonic() < deadline, f"nothing was skipped: {stalled}"
        time.sleep(0.1)
    assert stalled["buffered"] <= 50
    # The viewer reads again, and is told how much it missed.
    received = b""
    while b"event: skipped" not in received:
        chunk = viewer.recv(65536)
        assert chunk, "the feed closed"
        received += chunk
    block = received[received.index(b"event: skipped") :].split(b"\r\n\r\n")[0]
    data = json.loads(block.split(b"data: ", 1)[1])
    assert data["total"] >= data["skipped"] > 0
    viewer.close()
    asyncio.run(asyncio.sleep(0))
