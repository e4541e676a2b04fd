"""A new user's first minutes: `signalsmith serve` on the embedded defaults, events from the real
analytics-python client, and `signalsmith sql` reading them back from the embedded warehouse.

Nothing is configured: no Redis URL, no warehouse DSN. The server holds the chDB warehouse, so
`signalsmith sql` goes through its admin API; once the server stops, the same command opens the
warehouse directory itself and finds the same rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import segment.analytics

from signalsmith.embedded import free_port

DEADLINE_SECONDS = 30.0


def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}


def sql(workdir: Path, query: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalsmith", "sql", query, "--format", "json"],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows(workdir: Path, query: str) -> list[dict[str, Any]]:
    result = sql(workdir, query)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def rows_within(workdir: Path, query: str, count: int) -> tuple[list[dict[str, Any]], float]:
    """Poll `signalsmith sql` until ``count`` rows are there (tables appear with the first);
    the rows, and when the query that found them started (time.monotonic())."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    last = ""
    while time.monotonic() < deadline:
        started = time.monotonic()
        result = sql(workdir, query)
        if result.returncode == 0:
            found = json.loads(result.stdout)
            if len(found) >= count:
                return found, started
        last = result.stderr
        time.sleep(0.2)
    pytest.fail(f"{query!r} did not return {count} rows in {DEADLINE_SECONDS}s: {last}")


def test_events_sent_with_analytics_python_are_readable_with_signalsmith_sql(
    embedded_workdir: Path, embedded_server: Callable[..., Any]
) -> None:
    workdir = embedded_workdir
    port = free_port()
    server = embedded_server(workdir, port)
    write_key = server.field("Development write key")
    user = f"user-{uuid.uuid4().hex[:8]}"
    try:
        errors: list[Exception] = []
        client = segment.analytics.Client(
            write_key,
            host=f"http://127.0.0.1:{port}",
            sync_mode=False,
            max_retries=1,
            on_error=lambda error, batch: errors.append(error),
        )
        sent = time.monotonic()
        try:
            client.identify(user, {"email": "ada@example.com", "plan": "pro"})
            client.track(user, "Song Played", {"title": "Blue in Green", "seconds": 337})
            client.track(user, "Song Played", {"title": "So What", "seconds": 562.5})
            client.page(user, "Docs", "Pricing", {"path": "/pricing"})
            client.flush()
        finally:
            client.shutdown()
        assert errors == []

        played, found_at = rows_within(
            workdir,
            "SELECT user_id, event, event_text, title, seconds, context_library_name "
            "FROM song_played ORDER BY title",
            2,
        )
        # Each poll is a new `signalsmith sql` process (about a second to start on a busy
        # machine), so this is an upper bound on the events' own way to the warehouse.
        waited = found_at - sent
        assert played == [
            {
                "user_id": user,
                "event": "song_played",
                "event_text": "Song Played",
                "title": "Blue in Green",
                "seconds": 337.0,
                "context_library_name": "analytics-python",
            },
            {
                "user_id": user,
                "event": "song_played",
                "event_text": "Song Played",
                "title": "So What",
                "seconds": 562.5,
                "context_library_name": "analytics-python",
            },
        ]
        # "Within a few seconds": the worker writes a batch at most a second after it starts.
        assert waited < 15, f"events took {waited:.1f}s to be readable"
        print(f"events readable with `signalsmith sql` {waited:.1f}s after the flush began")
        users, _ = rows_within(workdir, "SELECT id, email, plan FROM users", 1)
        assert users == [{"id": user, "email": "ada@example.com", "plan": "pro"}]
        [page], _ = rows_within(workdir, "SELECT name, category, path FROM pages", 1)
        assert page == {"name": "Pricing", "category": "Docs", "path": "/pricing"}
        assert rows(workdir, "SELECT count() AS n FROM tracks") == [{"n": 2}]

        refused = sql(workdir, "DROP TABLE tracks")
        assert refused.returncode == 1 and "read-only" in refused.stderr
    finally:
        server.stop()

    # No server now: the command opens the embedded warehouse itself (the server let go of it).
    assert rows(workdir, "SELECT count() AS n FROM song_played") == [{"n": 2}]
