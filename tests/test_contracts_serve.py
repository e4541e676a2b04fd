"""A tracking plan on a real `signalsmith serve`: a plan imported from a Segment export, attached
to the development source in ./signalsmith.yaml, events sent with analytics-python. Blocked events
and every violation reach the embedded warehouse's `violations` table (chDB) while their batch
neighbours reach the event tables; `signalsmith contracts violations` reports them and
`signalsmith contracts infer` drafts a plan back from the warehouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import segment.analytics

from signalsmith.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_EXPORT = ROOT / "plugins" / "contracts" / "tests" / "data" / "segment_shop.json"
DEADLINE_SECONDS = 40.0

WORKSPACE = """\
version: 1
contracts:
  shop: {$include: plans/shop.json}
sources:
  dev:
    contract:
      plan: shop
      track: {violations: block, unplanned_events: block, unplanned_properties: omit}
"""


def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}


def signalsmith(workdir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalsmith", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows_within(workdir: Path, query: str, count: int, env: dict[str, str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    last = ""
    while time.monotonic() < deadline:
        result = signalsmith(workdir, "sql", query, "--format", "json", env=env)
        if result.returncode == 0:
            found = json.loads(result.stdout)
            if len(found) >= count:
                return found
        last = result.stderr
        time.sleep(0.3)
    pytest.fail(f"{query!r} did not return {count} rows in {DEADLINE_SECONDS}s: {last}")


def test_a_plan_blocks_records_and_reports_on_a_real_server(
    embedded_workdir: Path, embedded_server: Callable[..., Any]
) -> None:
    workdir = embedded_workdir
    env = clean_env()
    imported = signalsmith(
        workdir, "contracts", "import", str(SEGMENT_EXPORT), "-o", "plans/shop.json", env=env
    )
    assert imported.returncode == 0, imported.stderr
    (workdir / "signalsmith.yaml").write_text(WORKSPACE)
    port = free_port()
    server = embedded_server(workdir, port)
    write_key = server.field("Development write key")
    try:
        errors: list[Exception] = []
        client = segment.analytics.Client(
            write_key,
            host=f"http://127.0.0.1:{port}",
            sync_mode=False,
            max_retries=1,
            on_error=lambda error, batch: errors.append(error),
        )
        try:
            client.track(
                "ada", "Order Completed", {"order_id": "o-1", "currency": "EUR", "gift": True}
            )
            client.track("ada", "Order Completed", {"currency": "GBP"})  # blocked: two violations
            client.track("ada", "Signed Up", {"plan": "pro"})  # blocked: not in the plan
            client.track("bob", "Product Viewed", {"product_id": 42})
            client.flush()
        finally:
            client.shutdown()
        assert errors == []

        violations = rows_within(
            workdir,
            "SELECT event_name, handling, violation_type, rule, path, actual, event "
            "FROM violations ORDER BY event_name, path",
            3,
            env,
        )
        assert [
            (v["event_name"], v["handling"], v["violation_type"], v["rule"], v["path"])
            for v in violations
        ] == [
            ("Order Completed", "blocked", "Invalid Value", "pattern", "properties.currency"),
            ("Order Completed", "blocked", "Required", "required", "properties.order_id"),
            ("Signed Up", "blocked", "Unplanned Event", "unplanned_event", "event"),
        ]
        # A blocked event is kept whole: its only copy.
        assert json.loads(violations[2]["event"])["properties"] == {"plan": "pro"}
        # Its batch neighbours went on; the unplanned property was omitted, and said so.
        [order] = rows_within(
            workdir,
            "SELECT order_id, currency, context_protocols_omitted FROM order_completed",
            1,
            env,
        )
        assert order["order_id"] == "o-1" and order["currency"] == "EUR"
        assert "properties.gift" in order["context_protocols_omitted"]
        rows_within(workdir, "SELECT product_id FROM product_viewed", 1, env)

        report = signalsmith(
            workdir, "contracts", "violations", "--since", "1h", "--format", "json", env=env
        )
        assert report.returncode == 0, report.stderr
        summary = json.loads(report.stdout)
        assert summary["events"] == 2 and summary["blocked"] == 2

        drafted = signalsmith(workdir, "contracts", "infer", "--source", "dev", env=env)
        assert drafted.returncode == 0, drafted.stderr
        plan = json.loads(drafted.stdout)
        rules = {
            rule["key"]: rule["jsonSchema"] for rule in plan["rules"] if rule["type"] == "TRACK"
        }
        assert set(rules) == {"Order Completed", "Product Viewed"}
        order_rule = rules["Order Completed"]["properties"]["properties"]
        assert order_rule["properties"]["order_id"] == {"type": "string"}
        assert "order_id" in order_rule["required"]
        assert rules["Product Viewed"]["properties"]["properties"]["properties"]["product_id"] == {
            "type": "integer"
        }
    finally:
        server.stop()
