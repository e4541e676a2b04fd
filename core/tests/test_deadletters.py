"""Dead letters and replay: `signalsmith dlq list|show|replay|drop` and the admin API, against a
real Redis and the core's worker.

A replay goes to the one sink it names (its replay stream), keeps every messageId, takes the
events out of the dead letters in the same transaction (so a second replay finds nothing to
send), restarts their retry window and is paced at the rate it asked for.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from signalsmith.config import Settings
from signalsmith.deadletters import (
    LetterQuery,
    list_letters,
    parse_moment,
    replay_letters,
    replay_progress,
)
from signalsmith.model import Event, Track, event_list_decoder
from signalsmith.records import DeliveryReport
from signalsmith.stream import dead_letter_key, entry_fields, replay_key, stream_key
from signalsmith.testing import (
    build_cli,
    capture_sink_plugin,
    collector_client,
    message_id,
    running_worker,
)

ADMIN = "ssadm_dead_letters"


def track(name: str, **fields: Any) -> Track:
    now = datetime.now(UTC)
    return Track(
        message_id=message_id(),
        received_at=fields.pop("received_at", now),
        timestamp=now,
        event=name,
        project_id="web",
        **fields,
    )


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
    fields = entry_fields("web", events)
    await redis.xadd(
        stream_key(settings.key_prefix), dict(zip(fields[::2], fields[1::2], strict=True))
    )


async def letters(redis: aioredis.Redis, settings: Settings, sink: str) -> list[dict[str, Any]]:
    entries = await redis.xrange(dead_letter_key(settings.key_prefix, sink))
    return [{k.decode(): v for k, v in fields.items()} for _, fields in entries]


def lettered_ids(entries: list[dict[str, Any]]) -> set[str]:
    return {e.message_id for entry in entries for e in event_list_decoder.decode(entry["d"])}


async def cli(settings: Settings, *arguments: str, input: str | None = None) -> Result:
    """Run a `signalsmith` command the way a user would (in a thread: it runs its own loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, build_cli(settings), list(arguments), input=input, catch_exceptions=False
    )


class Flaky:
    """A destination that refuses some events (a 400, permanent) until it is mended, and
    records every event it accepted."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.broken = True
        self.accepted: list[str] = []
        self.batches: list[int] = []

    def __call__(self, events: list[Event]) -> DeliveryReport:
        self.batches.append(len(events))
        rejected = {
            e.message_id: f'HTTP 400 from crm: {{"error": "bad {getattr(e, "event", "")}"}}'
            for e in events
            if self.broken and getattr(e, "event", "") in self.refuse
        }
        self.accepted += [e.message_id for e in events if e.message_id not in rejected]
        return DeliveryReport(rejected=rejected)


async def test_dead_letters_are_listed_shown_replayed_to_their_sink_alone_and_dropped(
    settings: Settings, redis: aioredis.Redis
) -> None:
    crm = Flaky()
    crm.refuse = {"Order Completed", "Signed Up"}
    sink = capture_sink_plugin("crm", deliver=crm, max_wait_seconds=0.05)
    bystander = capture_sink_plugin("warehouse-ish", max_wait_seconds=0.05)
    orders = [track("Order Completed") for _ in range(3)]
    signups = [track("Signed Up") for _ in range(2)]
    fine = [track("Viewed") for _ in range(4)]
    await append(redis, settings, [*orders, *fine, *signups])
    async with running_worker(
        settings, (sink.plugin, sink.name), (bystander.plugin, bystander.name)
    ) as worker:
        await wait_until(lambda: letters(redis, settings, "crm"), "dead letters")
        await wait_until(lambda: len(bystander.batches) == 1, "the bystander's batch")

        listed = await cli(settings, "dlq", "list")
        assert listed.exit_code == 0, listed.output
        assert "crm" in listed.output and "5" in listed.output
        entries = json.loads((await cli(settings, "dlq", "list", "crm", "--json")).output)
        [entry] = entries
        assert entry["count"] == 5 and entry["sink"] == "crm"
        shown = await cli(settings, "dlq", "show", "crm", entry["id"])
        # Every event with its reason, the response body kept.
        for event in [*orders, *signups]:
            assert event.message_id in shown.output
        assert 'HTTP 400 from crm: {"error": "bad Signed Up"}' in shown.output
        as_json = json.loads(
            (await cli(settings, "dlq", "show", "crm", entry["id"], "--json")).output
        )
        assert {p["messageId"] for p in as_json["payloads"]} == {
            e.message_id for e in [*orders, *signups]
        }

        # Replay only the orders: the entry is split, the signups stay with their reasons.
        crm.broken = False
        replayed = await cli(settings, "dlq", "replay", "crm", "--event", "Order *", "--rate", "0")
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 3 events to crm" in replayed.output
        assert set(crm.accepted) >= {e.message_id for e in orders}
        remaining = await letters(redis, settings, "crm")
        assert lettered_ids(remaining) == {e.message_id for e in signups}
        [rest] = remaining
        assert msgspec.msgpack.decode(rest["errors"]) == {
            e.message_id: 'HTTP 400 from crm: {"error": "bad Signed Up"}' for e in signups
        }

        # A second replay of the same selection finds nothing: nothing is sent twice.
        again = await cli(settings, "dlq", "replay", "crm", "--event", "Order *")
        assert "no dead letters for crm match; nothing replayed" in again.output
        assert sorted(crm.accepted).count(orders[0].message_id) == 1

        # The replay reached crm alone; the other sink got each event once, from the stream.
        assert [len(b) for b in bystander.batches] == [9]

        dry = await cli(settings, "dlq", "replay", "crm", "--dry-run")
        assert "would replay 2 events from 1 dead-letter entries to crm" in dry.output
        dropped = await cli(settings, "dlq", "drop", "crm", "--error", "bad signed", "--yes")
        assert "dropped 2 events (1 entries)" in dropped.output
        assert await letters(redis, settings, "crm") == []
        await worker.stop()


async def test_a_replay_restarts_the_retry_window_and_what_fails_again_comes_back(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Events dead-lettered because their window passed are delivered when replayed (their
    window runs from the replay), and ones failing again are dead-lettered again, marked as
    coming from a replay, with messageIds kept."""
    old = [track("Old", received_at=datetime.now(UTC) - timedelta(hours=5)) for _ in range(3)]
    outcome = {"fail": True}

    def deliver(events: list[Event]) -> None:
        if outcome["fail"]:
            raise RuntimeError("HTTP 503")

    sink = capture_sink_plugin(
        "down", deliver=deliver, max_wait_seconds=0.05, max_attempts=None, retry_window_seconds=1
    )
    await append(redis, settings, old)
    async with running_worker(settings, (sink.plugin, sink.name)):
        await wait_until(lambda: letters(redis, settings, "down"), "dead letters")
        moved = await replay_letters(redis, settings.key_prefix, "down", rate=None)
        assert moved.events == 3
        await wait_until(
            lambda: _settled(redis, settings, "down", moved.replay_entries), "the failed replay"
        )
        [again] = await letters(redis, settings, "down")
        assert again["origin"] == b"replay"
        assert lettered_ids([again]) == {e.message_id for e in old}
        outcome["fail"] = False
        moved = await replay_letters(redis, settings.key_prefix, "down", rate=None)
        await wait_until(lambda: _settled(redis, settings, "down", moved.replay_entries), "replay")
    assert await letters(redis, settings, "down") == []
    delivered = [e for batch in sink.batches for e in batch]
    assert {e.message_id for e in delivered} == {e.message_id for e in old}
    assert all(
        isinstance(e, Track) and e.received_at < datetime.now(UTC) - timedelta(hours=4)
        for e in delivered
    )


async def _settled(
    redis: aioredis.Redis, settings: Settings, sink: str, entries: list[tuple[str, int]]
) -> bool:
    return (await replay_progress(redis, settings.key_prefix, sink, entries)).done


async def test_a_replay_is_paced_at_its_rate(settings: Settings, redis: aioredis.Redis) -> None:
    """A replay at 20 events/s is delivered in batches of at most 20 however large the sink's
    batch size, and the worker delivers it whole."""
    crm = Flaky()
    crm.refuse = {"Order Completed"}
    sink = capture_sink_plugin("crm", deliver=crm, max_wait_seconds=0.05, batch_size=500)
    orders = [track("Order Completed") for _ in range(50)]
    await append(redis, settings, orders)
    async with running_worker(settings, (sink.plugin, sink.name)):
        await wait_until(lambda: letters(redis, settings, "crm"), "dead letters")
        crm.broken = False
        crm.batches.clear()
        moved = await replay_letters(redis, settings.key_prefix, "crm", rate=20)
        await wait_until(lambda: _settled(redis, settings, "crm", moved.replay_entries), "replay")
    assert sum(crm.batches) == 50
    assert max(crm.batches) <= 20
    assert set(crm.accepted) == {e.message_id for e in orders}


async def test_the_admin_api_lists_shows_replays_and_drops(
    settings: Settings, redis: aioredis.Redis
) -> None:
    crm = Flaky()
    crm.refuse = {"Order Completed", "Signed Up"}
    sink = capture_sink_plugin("crm", deliver=crm, max_wait_seconds=0.05)
    events = [track("Order Completed"), track("Signed Up"), track("Signed Up")]
    await append(redis, settings, events)
    admin = msgspec.structs.replace(settings, admin_token=ADMIN)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        running_worker(admin, (sink.plugin, sink.name)),
        collector_client(admin) as client,
    ):
        await wait_until(lambda: letters(redis, settings, "crm"), "dead letters")
        assert (await client.get("/api/v1/admin/dlq")).status_code == 401
        sinks = (await client.get("/api/v1/admin/dlq", headers=headers)).json()
        assert sinks == [
            {
                "sink": "crm",
                "entries": 1,
                "events": 3,
                "oldest": sinks[0]["oldest"],
                "newest": sinks[0]["newest"],
            }
        ]
        listed = (
            await client.get("/api/v1/admin/dlq/crm", params={"event": "Signed*"}, headers=headers)
        ).json()
        assert [letter["count"] for letter in listed] == [2]
        assert {e["name"] for e in listed[0]["events"]} == {"Signed Up"}
        bad = await client.get(
            "/api/v1/admin/dlq/crm", params={"since": "yesterday"}, headers=headers
        )
        assert bad.status_code == 400
        assert bad.json()["code"] == "invalid_query" and "since" in bad.json()["message"]
        entry_id = listed[0]["id"]
        shown = await client.get(f"/api/v1/admin/dlq/crm/entries/{entry_id}", headers=headers)
        assert len(shown.json()["payloads"]) == 3
        missing = await client.get("/api/v1/admin/dlq/crm/entries/1-1", headers=headers)
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"

        crm.broken = False
        answer = await client.post(
            "/api/v1/admin/dlq/crm/replay",
            json={"event": "Order *", "rate": 0},
            headers=headers,
        )
        assert answer.status_code == 202, answer.text
        moved = answer.json()
        assert moved["events"] == 1

        async def done() -> bool:
            progress = await client.post(
                "/api/v1/admin/dlq/crm/replay/progress",
                json={"replay_entries": moved["replay_entries"]},
                headers=headers,
            )
            return progress.json()["settled"] == 1

        await wait_until(done, "the replay")
        assert events[0].message_id in crm.accepted
        backlog = (await client.get("/api/v1/admin/dlq/crm/replay", headers=headers)).json()
        assert backlog == {"waiting": 0, "pending": 0}
        dropped = await client.post("/api/v1/admin/dlq/crm/drop", json={}, headers=headers)
        assert dropped.json()["events"] == 2
    assert await letters(redis, settings, "crm") == []


async def test_an_undecodable_entry_is_listed_and_replayed_as_written(
    settings: Settings, redis: aioredis.Redis
) -> None:
    sink = capture_sink_plugin("crm", max_wait_seconds=0.05)
    await redis.xadd(stream_key(settings.key_prefix), {"v": "9", "src": "web", "n": 1, "d": b"?"})
    async with running_worker(settings, (sink.plugin, sink.name)):
        await wait_until(lambda: letters(redis, settings, "crm"), "dead letter")
        [letter] = await list_letters(redis, settings.key_prefix, "crm")
        assert letter.undecodable and letter.error == "unknown entry format v=9"
        # Selecting by event cannot look inside it; replaying everything takes it as written.
        assert (
            await replay_letters(redis, settings.key_prefix, "crm", LetterQuery(event="*"))
        ).events == 0
        moved = await replay_letters(redis, settings.key_prefix, "crm", rate=None)
        assert moved.events == 1
        [(_, fields)] = await redis.xrange(replay_key(settings.key_prefix, "crm"))
        assert fields[b"v"] == b"9" and fields[b"d"] == b"?"
        # Still undecodable by this worker: dead-lettered again, never lost.
        await wait_until(lambda: letters(redis, settings, "crm"), "dead letter again")


def test_times_are_iso_or_ago() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_moment("2h", now=now) == now - timedelta(hours=2)
    assert parse_moment("90s", now=now) == now - timedelta(seconds=90)
    assert parse_moment("2026-11-30T10:00:00Z") == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_moment("2026-11-30") == datetime(2026, 11, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_moment("yesterday")
