"""Redis goes away under a running collector and comes back: 503s meanwhile, nothing lost."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import redis as sync_redis

from signalsmith.embedded import RedisServerProcess
from signalsmith.testing import identify, track
from signalsmith.testing.stream import events_by_message_id, read_events_sync

if TYPE_CHECKING:
    from conftest import Collector

WAIT = 90.0  # seconds allowed for each phase to show what it should; never a speed assertion


class Sent(msgspec.Struct, frozen=True):
    """One request and what the collector answered (``status`` None: no HTTP answer at all)."""

    path: str
    body: dict[str, Any]
    message_ids: tuple[str, ...]
    status: int | None
    headers: dict[str, str]
    answer: Any
    # time.monotonic() when the request was sent and when its answer arrived
    started: float
    finished: float


class Traffic:
    """Clients sending events continuously, each request recorded with its answer."""

    def __init__(self, url: str, write_key: str) -> None:
        self.url = url
        self.write_key = write_key
        self.sent: list[Sent] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._send, args=(kind,), daemon=True)
            for kind in ("single", "batch")
        ]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _send(self, kind: str) -> None:
        with httpx.Client(base_url=self.url, auth=(self.write_key, ""), timeout=30) as http:
            while not self.stopping.is_set():
                if kind == "single":
                    path, body = "/v1/track", track(event="Outage Probe")
                    ids: tuple[str, ...] = (body["messageId"],)
                else:
                    messages = [track(event="Outage Batch"), identify(), track()]
                    path, body = "/v1/batch", {"batch": messages}
                    ids = tuple(m["messageId"] for m in messages)
                started = time.monotonic()
                try:
                    response = http.post(path, json=body)
                    status, headers = response.status_code, dict(response.headers)
                    try:
                        answer = response.json()
                    except ValueError:
                        answer = response.text
                except httpx.TransportError as error:
                    status, headers, answer = None, {}, repr(error)
                sent = Sent(path, body, ids, status, headers, answer, started, time.monotonic())
                with self.lock:
                    self.sent.append(sent)

    def snapshot(self) -> list[Sent]:
        with self.lock:
            return list(self.sent)

    def count(self, status: int, since: int = 0) -> int:
        return sum(1 for sent in self.snapshot()[since:] if sent.status == status)

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        statuses = Counter(sent.status for sent in self.snapshot())
        raise AssertionError(f"timed out waiting for {what}; answers so far: {dict(statuses)}")


def test_redis_outage_is_503_and_every_200_is_kept(
    redis_server_factory: Callable[..., RedisServerProcess],
    start_collector: Callable[..., Collector],
    key_prefix: str,
    write_key: str,
) -> None:
    server = redis_server_factory()  # TCP, append-only file: data survives a restart
    assert server.appendonly and not server.unix_socket
    collector = start_collector(
        redis_url=server.url,
        key_prefix=key_prefix,
        write_keys={write_key: "src-outage"},
        extra_env={"SIGNALSMITH_RETRY_AFTER_SECONDS": "3"},
    )

    with Traffic(collector.url, write_key) as traffic:
        traffic.wait_for(lambda: traffic.count(200) >= 20, "events accepted before the outage")

        server.stop()
        down_from = time.monotonic()
        stopped_at = len(traffic.snapshot())
        traffic.wait_for(
            lambda: sum(1 for s in traffic.snapshot() if s.started >= down_from) >= 6,
            "answers to requests made while Redis is down",
        )
        ready = httpx.get(f"{collector.url}/readyz", timeout=30)
        assert ready.status_code == 503, ready.text
        assert httpx.get(f"{collector.url}/healthz", timeout=30).status_code == 200

        down_until = time.monotonic()
        server.start()
        restarted_at = len(traffic.snapshot())
        traffic.wait_for(
            lambda: traffic.count(200, since=restarted_at) >= 20, "events accepted after restart"
        )
    sent = traffic.snapshot()
    assert httpx.get(f"{collector.url}/readyz", timeout=30).status_code == 200

    # The collector answered every request, and only with 200 or 503.
    statuses = Counter(s.status for s in sent)
    assert set(statuses) <= {200, 503}, f"{statuses}\n{collector.log_tail()}"
    assert statuses[503] >= 6
    # No request made and answered entirely while Redis was down was acknowledged.
    down = [s for s in sent if s.started >= down_from and s.finished <= down_until]
    assert len(down) >= 6
    assert {s.status for s in down} == {503}
    for s in sent:
        if s.status == 503:
            assert s.headers.get("retry-after") == "3", s.headers
            assert isinstance(s.answer, dict) and set(s.answer) == {"code", "message"}, s.answer
            assert s.answer["code"] == "buffer_unavailable", s.answer
            assert s.answer["message"]
            assert s.headers["content-type"].startswith("application/json")
        else:
            assert s.answer["accepted"] == len(s.message_ids), s.answer
            assert s.answer["rejected"] == [] and s.answer["duplicates"] == 0, s.answer

    client = sync_redis.Redis.from_url(server.url)
    try:
        # Every messageId that got a 200 is in the (restarted) stream, exactly once.
        acknowledged = {mid for s in sent if s.status == 200 for mid in s.message_ids}
        grouped = events_by_message_id(read_events_sync(client, key_prefix))
        missing = acknowledged - set(grouped)
        assert not missing, f"{len(missing)} acknowledged events are not in the stream"
        assert all(len(copies) == 1 for copies in grouped.values())
        acknowledged_before = {
            mid for s in sent[:stopped_at] if s.status == 200 for mid in s.message_ids
        }
        assert acknowledged_before and acknowledged_before <= set(grouped)

        # A client retrying its 503s now gets them all in, each exactly once (dedupe covers any
        # append Redis took but could not confirm before it went away).
        with httpx.Client(base_url=collector.url, auth=(write_key, ""), timeout=30) as http:
            for s in sent:
                if s.status == 503:
                    response = http.post(s.path, json=s.body, headers={"X-Retry-Count": "1"})
                    assert response.status_code == 200, response.text
                    answer = response.json()
                    assert answer["accepted"] + answer["duplicates"] == len(s.message_ids)
        everything = {mid for s in sent for mid in s.message_ids}
        grouped = events_by_message_id(read_events_sync(client, key_prefix))
        assert set(grouped) == everything
        assert all(len(copies) == 1 for copies in grouped.values())
    finally:
        client.close()
