"""Consent across real processes: two `signalsmith serve` collectors on one Redis seeing the same
withdrawal, and the embedded serve (chDB warehouse, a webhook destination, the debugger) where
the warehouse takes only what its categories allow and the trace says why an event did not
reach it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis as sync_redis

from signalsmith.embedded import free_port
from signalsmith.testing import Receiver, track
from signalsmith.testing.stream import read_events_sync

DEADLINE_SECONDS = 30.0
# The test key table, the consent plugin and the webhook destination type; nothing else.
PLUGINS = "signalsmith.testing.env_keys,consent,dest-webhook"


def preference_update(user: str, preferences: dict[str, bool]) -> dict[str, Any]:
    return track(
        "Segment Consent Preference Updated",
        userId=user,
        properties={},
        context={"consent": {"categoryPreferences": preferences}},
    )


def send(url: str, key: str, *messages: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(
        f"{url}/v1/batch", json={"batch": list(messages)}, auth=(key, ""), timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_two_collectors_see_the_same_withdrawal_at_once(
    start_collector: Callable[..., Any], redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}
    env.update(
        {
            "SIGNALSMITH_REDIS_URL": redis_url,
            "SIGNALSMITH_KEY_PREFIX": key_prefix,
            "SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.env_keys",
            "SIGNALSMITH_LOAD_PLUGINS": PLUGINS,
        }
    )
    workspace = tmp_path / "signalsmith.yaml"
    workspace.write_text(
        textwrap.dedent(
            """\
            version: 1
            sources:
              web: {destinations: [ads]}
            destinations:
              ads:
                type: webhook
                settings: {url: "https://ads.example.com/collect"}
                routing: {consent: [advertising]}
            consent:
              categories: [advertising]
            """
        )
    )
    applied = subprocess.run(
        [sys.executable, "-m", "signalsmith", "config", "apply", str(workspace)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stderr
    key = f"wk_web_{uuid.uuid4().hex[:8]}"
    first, second = (
        start_collector(
            redis_url=redis_url,
            key_prefix=key_prefix,
            write_keys={key: "web"},
            extra_env={"SIGNALSMITH_LOAD_PLUGINS": PLUGINS},
        )
        for _ in range(2)
    )
    user = f"user-{uuid.uuid4().hex[:8]}"

    send(first.url, key, preference_update(user, {"advertising": True}))
    granted = track("Ad Clicked", userId=user)
    accepted = send(second.url, key, granted)
    assert accepted["accepted"] == 1 and accepted["dropped"] == []

    # The withdrawal itself reaches no sink (the only one needs advertising): dropped, but
    # remembered before the first collector answers.
    withdrawn = send(first.url, key, preference_update(user, {"advertising": False}))
    assert withdrawn["dropped"][0]["reason"] == "no_consent"
    after = [track("Ad Clicked", userId=user) for _ in range(2)]
    for collector, message in zip((second, first), after, strict=True):
        answer = send(collector.url, key, message)
        assert answer["accepted"] == 0
        [drop] = answer["dropped"]
        assert drop["reason"] == "no_consent"
        assert drop["detail"] == "no sink may receive it: ads needs advertising"

    client = sync_redis.Redis.from_url(redis_url)
    try:
        buffered = {event.message_id: event for event in read_events_sync(client, key_prefix)}
        counted = client.hgetall(f"{key_prefix}:consent:dropped")
    finally:
        client.close()
    # The event the second collector accepted carries the choice it was judged by.
    assert buffered[granted["messageId"]].context["consent"] == {
        "categoryPreferences": {"advertising": True}
    }
    assert not any(message["messageId"] in buffered for message in after)
    assert counted == {b"web": b"3"}


# --- the warehouse, on the embedded serve ------------------------------------------------------


def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}


def sql_rows(workdir: Path, query: str) -> list[dict[str, Any]] | None:
    result = subprocess.run(
        [sys.executable, "-m", "signalsmith", "sql", query, "--format", "json"],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        return None  # the table is not there yet
    import json

    return json.loads(result.stdout)


def eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_warehouse_takes_only_what_its_categories_allow_and_the_trace_says_why(
    embedded_workdir: Path, embedded_server: Callable[..., Any]
) -> None:
    with Receiver() as receiver:
        (embedded_workdir / "signalsmith.yaml").write_text(
            textwrap.dedent(
                f"""\
                version: 1
                sources:
                  dev: {{destinations: [open]}}
                destinations:
                  open:
                    type: webhook
                    settings: {{url: "{receiver.url}"}}
                    max_wait_seconds: 0.05
                consent:
                  categories: [analytics, marketing]
                  sinks: {{clickhouse: [analytics]}}
                """
            )
        )
        port = free_port()
        server = embedded_server(embedded_workdir, port)
        try:
            url = f"http://127.0.0.1:{port}"
            key = server.field("Development write key")
            admin = server.field("Admin token")

            def consenting(name: str, preferences: dict[str, bool] | None) -> dict[str, Any]:
                context = (
                    {} if preferences is None else {"consent": {"categoryPreferences": preferences}}
                )
                return track(name, userId=f"u-{uuid.uuid4().hex[:6]}", context=context)

            granted = consenting("Granted", {"analytics": True})
            declined = consenting("Declined", {"analytics": False, "marketing": True})
            silent = consenting("Silent", None)
            answer = send(url, key, granted, declined, silent)
            assert answer["accepted"] == 3, answer

            # The webhook needs no category: it gets all three.
            eventually(lambda: len(receiver.payloads()) == 3, "three events at the webhook")

            def trace(message: dict[str, Any]) -> dict[str, Any] | None:
                found = httpx.get(
                    f"{url}/api/v1/admin/trace/{message['messageId']}",
                    headers={"Authorization": f"Bearer {admin}"},
                    timeout=30,
                )
                if found.status_code != 200:
                    return None
                body = found.json()
                return body if any(s["sink"] == "clickhouse" for s in body["sinks"]) else None

            declined_trace = eventually(lambda: trace(declined), "the warehouse's word on Declined")
            [fate] = [s for s in declined_trace["sinks"] if s["sink"] == "clickhouse"]
            assert (
                fate["status"] == "skipped" and fate["reason"] == "consent: analytics not granted"
            )
            assert (
                "not for warehouse 'clickhouse': consent: analytics not granted"
                in (declined_trace["summary"])
            )
            collected = [
                step
                for step in declined_trace["steps"]
                if step["stage"] == "consent" and step.get("sink") == "clickhouse"
            ]
            assert collected and collected[0]["detail"] == "consent: analytics not granted"
            for message in (granted, silent):
                done = eventually(
                    lambda m=message: trace(m), f"the warehouse's word on {message['event']}"
                )
                assert [s["status"] for s in done["sinks"] if s["sink"] == "clickhouse"] == [
                    "delivered"
                ]

            rows = eventually(
                lambda: sql_rows(
                    embedded_workdir, "SELECT event_text FROM tracks ORDER BY event_text"
                ),
                "rows in the warehouse",
            )
            assert [row["event_text"] for row in rows] == ["Granted", "Silent"]
        finally:
            server.stop()
