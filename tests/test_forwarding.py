"""Forwarding across real processes: analytics-python sends to a `signalsmith serve` collector,
a `signalsmith worker` delivers to a webhook (a local HTTP server) and forwards to a second
SignalSmith collector through the Segment-compatible destination, a workspace applied with
`signalsmith config apply`; dead letters are replayed with `signalsmith dlq replay`; a worker
killed with SIGKILL in the middle of a delivery loses nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis as sync_redis
import segment.analytics

from signalsmith.testing import Received, Receiver, Reply
from signalsmith.testing.stream import read_events_sync

if TYPE_CHECKING:
    from conftest import Collector

HOOK_SECRET = "whsec-" + uuid.uuid4().hex
PLUGINS = "signalsmith.testing.env_keys,dest-webhook,dest-segment"
DEADLINE = 90.0


def env_for(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}
    env.update(
        {
            "SIGNALSMITH_REDIS_URL": redis_url,
            "SIGNALSMITH_KEY_PREFIX": prefix,
            "SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.env_keys",
            "SIGNALSMITH_LOAD_PLUGINS": PLUGINS,
            "SIGNALSMITH_WORKER_BLOCK_MS": "100",
            "SIGNALSMITH_WORKER_CLAIM_IDLE_MS": "1500",
            "SIGNALSMITH_WORKER_RETRY_BASE_SECONDS": "0.05",
            "SIGNALSMITH_WORKER_RETRY_MAX_SECONDS": "0.5",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


class Worker:
    """`python -m signalsmith worker`, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "signalsmith", "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Worker]]:
    started: list[Worker] = []

    def start(env: dict[str, str]) -> Worker:
        worker = Worker(env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def signalsmith(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalsmith", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def until(condition: Callable[[], Any], what: str, within: float = DEADLINE) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def send(
    collector: Collector, write_key: str, calls: Callable[[segment.analytics.Client], None]
) -> None:
    errors: list[Exception] = []
    client = segment.analytics.Client(
        write_key,
        host=collector.url,
        sync_mode=False,
        gzip=True,
        max_retries=1,
        on_error=lambda error, batch: errors.append(error),
    )
    try:
        calls(client)
        client.flush()
    finally:
        client.shutdown()
    assert errors == [], f"{errors}\n{collector.log_tail()}"


def test_analytics_python_to_a_webhook_and_another_signalsmith_with_dead_letters_replayed(
    start_collector: Callable[..., Collector],
    start_worker: Callable[[dict[str, str]], Worker],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    downstream_prefix = f"{key_prefix}:downstream"
    web_key, downstream_key = f"wk_web_{uuid.uuid4().hex[:8]}", f"wk_down_{uuid.uuid4().hex[:8]}"
    env = env_for(redis_url, key_prefix, HOOK_SECRET=HOOK_SECRET, DOWNSTREAM_KEY=downstream_key)
    refusing = {"on": True}

    def webhook(request: Received) -> Reply | None:
        if refusing["on"] and any(p.get("name") == "Refused Event" for p in request.payloads):
            return Reply(400, {"error": "we do not take refused events"})
        return None

    with Receiver(webhook) as receiver:
        # The second SignalSmith: a collector of its own prefix, no sinks (its stream keeps all).
        downstream = start_collector(
            redis_url=redis_url,
            key_prefix=downstream_prefix,
            write_keys={downstream_key: "upstream"},
        )
        collector = start_collector(
            redis_url=redis_url,
            key_prefix=key_prefix,
            write_keys={web_key: "web"},
            extra_env={"SIGNALSMITH_LOAD_PLUGINS": PLUGINS},
        )
        workspace = tmp_path / "signalsmith.yaml"
        workspace.write_text(
            textwrap.dedent(
                f"""\
                version: 1
                sources:
                  web: {{destinations: [hook, forward]}}
                destinations:
                  hook:
                    type: webhook
                    settings: {{url: "{receiver.url}/hook", secret: "${{HOOK_SECRET}}", batch: true}}
                    routing:
                      types: [track]
                      deny_events: ["Internal *"]
                    mapping:
                      track:
                        name: {{"@path": "$.event"}}
                        user: {{"@path": "$.userId"}}
                        total: {{"@path": "$.properties.total"}}
                        id: {{"@path": "$.messageId"}}
                    max_wait_seconds: 0.2
                  forward:
                    type: segment
                    settings: {{url: "{downstream.url}/v1/batch", write_key: "${{DOWNSTREAM_KEY}}"}}
                    max_wait_seconds: 0.2
                """
            )
        )
        applied = signalsmith(env, "config", "apply", str(workspace))
        assert applied.returncode == 0, applied.stderr
        worker = start_worker(env)

        user = f"py-{uuid.uuid4().hex[:8]}"
        orders = [str(uuid.uuid4()) for _ in range(5)]
        refused, internal, who = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())

        def calls(client: segment.analytics.Client) -> None:
            for number, message_id in enumerate(orders):
                client.track(user, "Order Completed", {"total": number}, message_id=message_id)
            client.track(user, "Refused Event", {}, message_id=refused)
            client.track(user, "Internal Ping", {}, message_id=internal)
            client.identify(user, {"plan": "pro"}, message_id=who)

        send(collector, web_key, calls)

        # The webhook: mapped track events only, signed, in batches.
        def hooked() -> list[Any]:
            return receiver.payloads("/hook")

        until(lambda: len(hooked()) == 5, "the webhook's events")
        assert sorted(p["id"] for p in hooked()) == sorted(orders)
        assert {p["user"] for p in hooked()} == {user}
        for request in receiver.received():
            expected = (
                "sha256=" + hmac.new(HOOK_SECRET.encode(), request.raw, hashlib.sha256).hexdigest()
            )
            assert request.headers["X-Signature-256"] == expected

        # The other SignalSmith: every event (its routing takes all), same ids, same times.
        client = sync_redis.Redis.from_url(redis_url)
        try:
            forwarded = until(
                lambda: (
                    (found := read_events_sync(client, downstream_prefix))
                    and len(found) == 8
                    and found
                ),
                "the forwarded events",
            )
        finally:
            client.close()
        assert {e.message_id for e in forwarded} == {*orders, refused, internal, who}
        assert all(e.project_id == "upstream" for e in forwarded)
        [identify] = [e for e in forwarded if e.type == "identify"]
        assert identify.traits["plan"] == "pro" and identify.user_id == user

        # The refused event is in the webhook's dead letters, with the answer kept...
        listed = until(
            lambda: (
                (out := signalsmith(env, "dlq", "list", "hook")).returncode == 0
                and "rejected" in out.stdout + out.stderr
                and out
            ),
            "the dead letter",
        )
        assert "1" in listed.stdout
        # ... and a replay, once the receiver takes it, delivers it to the webhook alone.
        refusing["on"] = False
        replayed = signalsmith(env, "dlq", "replay", "hook", "--rate", "50")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr + worker.log()
        assert "replayed 1 events to hook" in replayed.stdout
        until(lambda: refused in {p["id"] for p in hooked()}, "the replayed event")
        assert (
            signalsmith(env, "dlq", "list", "hook").stdout.strip()
            == "no dead letters for hook match"
        )
        time.sleep(1.0)  # anything sent twice would have arrived by now
        client = sync_redis.Redis.from_url(redis_url)
        try:
            assert len(read_events_sync(client, downstream_prefix)) == 8
        finally:
            client.close()
        assert sorted(p["id"] for p in hooked()) == sorted([*orders, refused])


def test_a_worker_killed_mid_delivery_loses_nothing(
    start_collector: Callable[..., Collector],
    start_worker: Callable[[dict[str, str]], Worker],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """SIGKILL while batches are in flight to a slow webhook: the next worker reclaims what
    the dead one held, and every event arrives (some twice: at least once, by messageId)."""
    env = env_for(redis_url, key_prefix)
    web_key = f"wk_web_{uuid.uuid4().hex[:8]}"
    in_flight = threading.Event()

    def slow(request: Received) -> Reply | None:
        in_flight.set()
        return Reply(200, {}, delay=0.5)

    with Receiver(slow) as receiver:
        collector = start_collector(
            redis_url=redis_url,
            key_prefix=key_prefix,
            write_keys={web_key: "web"},
            extra_env={"SIGNALSMITH_LOAD_PLUGINS": PLUGINS},
        )
        workspace = tmp_path / "signalsmith.yaml"
        workspace.write_text(
            textwrap.dedent(
                f"""\
                version: 1
                sources:
                  web: {{destinations: [hook]}}
                destinations:
                  hook:
                    type: webhook
                    settings: {{url: "{receiver.url}", batch: true, max_events_per_request: 10, concurrency: 2}}
                    batch_size: 20
                    max_wait_seconds: 0.1
                """
            )
        )
        assert signalsmith(env, "config", "apply", str(workspace)).returncode == 0
        sent = [str(uuid.uuid4()) for _ in range(200)]

        def calls(client: segment.analytics.Client) -> None:
            for message_id in sent:
                client.track("u-1", "Clicked", {}, message_id=message_id)

        first = start_worker(env)
        send(collector, web_key, calls)
        assert in_flight.wait(60), first.log()
        time.sleep(0.2)
        first.kill()
        killed_with = {p["messageId"] for p in receiver.payloads()}
        assert len(killed_with) < len(sent), "the worker finished before it was killed"
        start_worker(env)
        until(lambda: {p["messageId"] for p in receiver.payloads()} >= set(sent), "every event")
    delivered = [p["messageId"] for p in receiver.payloads()]
    assert set(delivered) == set(sent)
    client = sync_redis.Redis.from_url(redis_url)
    try:
        assert client.xlen(f"{key_prefix}:dlq:hook") == 0
    finally:
        client.close()
