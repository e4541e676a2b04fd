"""Write keys across real processes: `signalsmith serve` collectors with the auth-writekey plugin,
the `signalsmith keys` CLI as its own process, the admin API over HTTP, a real Redis, and the real
analytics-python client.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pytest
import redis as sync_redis
import segment.analytics

from signalsmith.admin import AdminClient
from signalsmith.testing import track
from signalsmith.testing.stream import events_by_message_id, read_events_sync

if TYPE_CHECKING:
    from conftest import Collector

ADMIN_TOKEN = f"ssadm_system-{uuid.uuid4().hex}"
PLUGIN = "auth-writekey"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def start_keyed_collector(
    start_collector: Callable[..., Collector], redis_url: str, key_prefix: str
) -> Callable[[], Collector]:
    """Collectors whose only plugin is auth-writekey, sharing this test's Redis prefix."""

    def start() -> Collector:
        return start_collector(
            redis_url=redis_url,
            key_prefix=key_prefix,
            write_keys={},
            extra_env={
                "SIGNALSMITH_LOAD_PLUGINS": PLUGIN,
                "SIGNALSMITH_PLUGIN_MODULES": "",
                "SIGNALSMITH_ADMIN_TOKEN": ADMIN_TOKEN,
            },
        )

    return start


@pytest.fixture
def keys_cli(redis_url: str, key_prefix: str, tmp_path: Path) -> Callable[..., str]:
    """Run `python -m signalsmith keys ...` as its own process; returns its output."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}
    env.update(
        {
            "SIGNALSMITH_REDIS_URL": redis_url,
            "SIGNALSMITH_KEY_PREFIX": key_prefix,
            "SIGNALSMITH_DATA_DIR": str(tmp_path / "cli"),
            "SIGNALSMITH_LOAD_PLUGINS": PLUGIN,
        }
    )

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "signalsmith", "keys", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    return run


def key_in(output: str) -> str:
    (key,) = [line.strip() for line in output.splitlines() if line.startswith("    ")]
    assert key.startswith("ss_")
    return key


@contextlib.contextmanager
def admin(collector: Collector) -> Iterator[AdminClient]:
    """The core's admin API client, with this test's admin token."""
    client = AdminClient(collector.url, ADMIN_TOKEN)
    try:
        yield client
    finally:
        client.close()


def post_batch(url: str, key: str, count: int, *, client: httpx.Client | None = None) -> Any:
    body = {"batch": [track() for _ in range(count)]}
    sender = client or httpx
    return sender.post(f"{url}/v1/batch", json=body, auth=(key, ""), timeout=30)


def assert_never_logged(collectors: list[Collector], *secrets: str) -> None:
    for collector in collectors:
        log = collector.log_path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in log, f"a write key is in {collector.log_path}"


# --- revocation across processes ------------------------------------------------------------


def test_a_revoked_key_is_refused_by_a_second_collector_that_had_it_cached(
    start_keyed_collector: Callable[[], Collector], keys_cli: Callable[..., str]
) -> None:
    first, second = start_keyed_collector(), start_keyed_collector()
    with admin(first) as api:
        created = api.request("POST", "/keys", json={"source": "web"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    # Both processes have now resolved (and cached) the key.
    for collector in (first, second):
        assert post_batch(collector.url, key, 1).status_code == 200
        assert httpx.get(f"{collector.url}/v1/projects/{key}/settings").status_code == 200

    keys_cli("revoke", key[:10])
    revoked_at = time.monotonic()

    # The very next request is refused: the admit script reads the key's state in Redis.
    refused = post_batch(second.url, key, 1)
    assert refused.status_code == 401, refused.text
    assert set(refused.json()) == {"code", "message"}
    assert post_batch(first.url, key, 1).status_code == 401
    # The settings endpoint answers from the cache alone: the invalidation message clears it.
    while httpx.get(f"{second.url}/v1/projects/{key}/settings").status_code != 404:
        assert time.monotonic() - revoked_at < 1.0, "the revocation took over a second"
        time.sleep(0.02)
    assert_never_logged([first, second], key)


# --- one key's free plan shared by two collectors --------------------------------------------


class Answer(msgspec.Struct, frozen=True):
    collector: int
    status: int
    accepted: int
    headers: dict[str, str]
    body: dict[str, Any]
    message_ids: tuple[str, ...]


def test_two_collectors_share_one_keys_free_plan(
    start_keyed_collector: Callable[[], Collector],
    keys_cli: Callable[..., str],
    redis_client: sync_redis.Redis,
    key_prefix: str,
) -> None:
    collectors = [start_keyed_collector(), start_keyed_collector()]
    key = key_in(keys_cli("create", "--source", "web"))  # the free plan: 100/s, bursts of 500
    batch, seconds = 10, 3.0
    answers: list[Answer] = []
    last_asked = [0.0] * len(collectors)
    lock = threading.Lock()
    start = threading.Barrier(len(collectors) + 1)

    def send(index: int) -> None:
        with httpx.Client(base_url=collectors[index].url, auth=(key, ""), timeout=30) as http:
            start.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                messages = [track() for _ in range(batch)]
                last_asked[index] = time.monotonic()
                response = http.post("/v1/batch", json={"batch": messages})
                body = response.json()
                answer = Answer(
                    collector=index,
                    status=response.status_code,
                    accepted=body.get("accepted", 0) if response.status_code == 200 else 0,
                    headers=dict(response.headers),
                    body=body,
                    message_ids=tuple(m["messageId"] for m in messages),
                )
                with lock:
                    answers.append(answer)
                if response.status_code == 429:
                    time.sleep(0.005)  # a polite client; the limit is what is under test

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(collectors))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - began

    assert {a.status for a in answers} == {200, 429}, {a.status for a in answers}
    accepted = sum(a.accepted for a in answers)
    # Exactly the burst at once, then 100 events a second, whichever process took them: never
    # more than the clock allows, and (the clients never stopped asking) not much less.
    assert accepted <= 500 + 100 * elapsed + 1, (accepted, elapsed)
    # The floor counts the refill only until the last request was sent: on a loaded machine the
    # last answers can take long, and what refills meanwhile is never asked for.
    asking = max(last_asked) - began
    assert accepted >= 500 + 100 * (asking - 0.3) - 2 * batch, (accepted, asking, elapsed)
    for index in range(len(collectors)):
        mine = [a for a in answers if a.collector == index]
        assert {a.status for a in mine} == {200, 429}, f"collector {index}: {mine[:3]}"

    for refused in (a for a in answers if a.status == 429):
        # 10 events at 100/s are 0.1 s away: one whole second; the full burst is 5 s away.
        assert refused.headers["retry-after"] == "1"
        assert 1 <= int(refused.headers["x-ratelimit-reset"]) <= 5
        assert refused.body["code"] == "rate_limited"
        assert key[:10] in refused.body["message"] and key not in refused.body["message"]

    # Nothing from a refused request was buffered; everything accepted was, once.
    buffered = events_by_message_id(read_events_sync(redis_client, key_prefix))
    expected = {mid for a in answers if a.status == 200 for mid in a.message_ids}
    assert set(buffered) == expected
    assert len(expected) == accepted
    assert all(len(copies) == 1 for copies in buffered.values())
    assert_never_logged(collectors, key)


# --- the real analytics-python client meets the limit ----------------------------------------


def test_analytics_python_retries_429s_and_loses_nothing(
    start_keyed_collector: Callable[[], Collector],
    redis_client: sync_redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = start_keyed_collector()
    with admin(collector) as api:
        key = api.request("POST", "/keys", json={"source": "python"}).json()["key"]
    caplog.set_level(logging.DEBUG, logger="segment")
    errors: list[Exception] = []
    count = 800  # 500 at once, then 300 more at 100/s: three 100-event batches wait their turn
    client = segment.analytics.Client(
        key,
        host=collector.url,
        max_retries=2,
        on_error=lambda error, batch: errors.append(error),
    )
    ids = [str(uuid.uuid4()) for _ in range(count)]
    began = time.monotonic()
    try:
        for message_id in ids:
            client.track(user_id="py-user", event="Limited", message_id=message_id)
        client.flush()
    finally:
        client.shutdown()
    elapsed = time.monotonic() - began

    assert errors == [], f"{errors}\n{collector.log_tail()}"
    buffered = events_by_message_id(read_events_sync(redis_client, key_prefix))
    assert set(buffered) == set(ids)
    assert all(len(copies) == 1 for copies in buffered.values())
    # The client was held back by 429s and waited as told: 300 events past the burst take 3 s.
    rate_limited = [r for r in caplog.records if "Rate-limited (status 429)" in r.getMessage()]
    assert rate_limited, "the client never saw a 429"
    assert elapsed >= 2.5, elapsed
    assert_never_logged([collector], key)


# --- the whole lifecycle through a running collector -------------------------------------------


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def test_key_lifecycle_through_a_running_collector(
    start_keyed_collector: Callable[[], Collector], keys_cli: Callable[..., str]
) -> None:
    collector = start_keyed_collector()
    with admin(collector) as api:
        key = api.request("POST", "/keys", json={"source": "web"}).json()["key"]
        cli_key = key_in(keys_cli("create", "--source", "web", "--plan", "pro"))
        assert post_batch(collector.url, key, 1).status_code == 200
        assert post_batch(collector.url, cli_key, 1).status_code == 200

        # Both listings show both keys by prefix, with their plans, and never a key.
        listed = api.request("GET", "/keys", params={"source": "web"})
        cli_listed = keys_cli("list", "--source", "web")
        assert {row["prefix"]: row["plan"] for row in listed.json()} == {
            key[:10]: "free",
            cli_key[:10]: "pro",
        }
        assert f"{key[:10]}..." in cli_listed and f"{cli_key[:10]}..." in cli_listed
        for text in (listed.text, cli_listed):
            assert key not in text and cli_key not in text

        # The admin API refuses no token, a wrong token, and a write key, over real HTTP.
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {key}"},
            basic(key),
        ):
            refused = httpx.get(f"{collector.url}/api/v1/admin/keys", headers=headers)
            assert refused.status_code == 401, headers
            assert key[:10] not in refused.text

        # A plan change applies to the very next request.
        assert post_batch(collector.url, key, 501).status_code == 413
        planned = api.request("PUT", f"/keys/{key[:10]}/plan", json={"plan": "pro"})
        assert planned.status_code == 200 and planned.json()["burst"] == 5000
        assert post_batch(collector.url, key, 1000).status_code == 200
        keys_cli("set-plan", key[:10], "--plan", "free")
        assert post_batch(collector.url, key, 501).status_code == 413

        # Rotation: the old key keeps working for its grace, then is refused.
        rotated = api.request("POST", f"/keys/{key[:10]}/rotate", json={"grace_seconds": 2})
        assert rotated.status_code == 201, rotated.text
        new_key = rotated.json()["key"]
        cli_new = key_in(keys_cli("rotate", cli_key[:10], "--grace", "2s"))
        for working in (key, new_key, cli_key, cli_new):
            assert post_batch(collector.url, working, 1).status_code == 200
        time.sleep(2.1)
        for expired in (key, cli_key):
            assert post_batch(collector.url, expired, 1).status_code == 401
        for working in (new_key, cli_new):
            assert post_batch(collector.url, working, 1).status_code == 200

        # Revocation, by the API and by the CLI.
        assert api.request("POST", f"/keys/{new_key[:10]}/revoke").status_code == 200
        keys_cli("revoke", cli_new[:10])
        for revoked in (new_key, cli_new):
            assert post_batch(collector.url, revoked, 1).status_code == 401
        states = {row["prefix"]: row["state"] for row in api.request("GET", "/keys").json()}
        assert states == {
            key[:10]: "expired",
            cli_key[:10]: "expired",
            new_key[:10]: "revoked",
            cli_new[:10]: "revoked",
        }
    assert_never_logged([collector], key, cli_key, new_key, cli_new)
