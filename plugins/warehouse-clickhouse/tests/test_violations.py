"""The `violations` table, loaded from the core's violations stream (real Redis, real chDB).

Records are written as a contract plugin writes them (``signalsmith.ViolationRecord``, msgpack,
in the core's stream); this plugin knows no contract plugin.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from signalsmith import (
    VIOLATION_RECORD_FIELD,
    VIOLATIONS_STREAM,
    Settings,
    Violation,
    ViolationRecord,
)
from signalsmith.testing import runtime_for
from signalsmith_warehouse_clickhouse import ClickHouseWarehouse
from signalsmith_warehouse_clickhouse.violations import ViolationsLoader

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def record(message_id: str, handling: str, *violations: Violation) -> ViolationRecord:
    return ViolationRecord(
        source_id="web",
        message_id=message_id,
        event_type="track",
        event_name="Order Completed",
        received_at=NOW,
        plan="shop",
        event_version=1,
        handling=handling,  # type: ignore[arg-type]
        violations=violations,
        event=json.dumps({"messageId": message_id, "properties": {"currency": "GBP"}}).encode(),
    )


REQUIRED = Violation(
    type="Required",
    field="properties.order_id",
    description="order_id is required",
    rule="required",
    expected="present",
    actual="missing",
)
PATTERN = Violation(
    type="Invalid Value",
    field="properties.currency",
    description="Does not match pattern 'USD|EUR'",
    rule="pattern",
    expected='"USD|EUR"',
    actual='"GBP"',
)


async def rows_eventually(
    warehouse: ClickHouseWarehouse, sql: str, count: int, within: float = 20.0
) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            result = await warehouse.query(sql)
            rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
            if len(rows) >= count:
                return rows
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
        assert asyncio.get_running_loop().time() < deadline, f"no {count} rows for {sql!r}"
        await asyncio.sleep(0.1)


async def test_every_violation_is_a_row_and_a_blocked_event_is_kept_whole(
    settings: Settings,
    redis: aioredis.Redis,
    open_warehouse: Callable[..., Awaitable[ClickHouseWarehouse]],
) -> None:
    warehouse = await open_warehouse()
    stream = f"{settings.key_prefix}:{VIOLATIONS_STREAM}"
    encoder = msgspec.msgpack.Encoder()
    # Written before any loader ran: loaded too (the group starts at the stream's beginning).
    await redis.xadd(
        stream,
        {VIOLATION_RECORD_FIELD: encoder.encode(record("blocked", "blocked", REQUIRED, PATTERN))},
    )
    async with runtime_for(settings) as runtime:
        loader = ViolationsLoader(runtime, warehouse, "clickhouse")
        loader.start()
        try:
            await redis.xadd(
                stream,
                {VIOLATION_RECORD_FIELD: encoder.encode(record("allowed", "allowed", PATTERN))},
            )
            rows = await rows_eventually(
                warehouse,
                "SELECT message_id, handling, violation_type, rule, path, expected, actual, event "
                "FROM violations ORDER BY message_id, path",
                3,
            )
        finally:
            await loader.stop()
    assert [(r["message_id"], r["handling"], r["rule"], r["path"]) for r in rows] == [
        ("allowed", "allowed", "pattern", "properties.currency"),
        ("blocked", "blocked", "pattern", "properties.currency"),
        ("blocked", "blocked", "required", "properties.order_id"),
    ]
    assert json.loads(rows[1]["event"])["properties"] == {"currency": "GBP"}
    assert rows[2]["violation_type"] == "Required" and rows[2]["actual"] == "missing"
    # Loading the same records again (a redelivery after a crash) keeps one row each.
    await warehouse.write_violations([record("blocked", "blocked", REQUIRED, PATTERN)])
    result = await warehouse.query("SELECT count() FROM violations")
    assert result.rows == [[3]]
    pending = await redis.xpending(stream, "clickhouse:violations")
    assert pending["pending"] == 0
