"""Shadow plans (a differential test against enforcing them), the violations report (admin API
and CLI), and ``Violation Generated`` forwarding to a real HTTP server."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from click.testing import CliRunner

import signalsmith_contracts.plugin as contracts_plugin
from signalsmith import Settings
from signalsmith.testing import Receiver, build_cli, plugin_manager, running_worker
from signalsmith.testing.stream import read_events

SHOP = json.loads((Path(__file__).parent / "data" / "segment_shop.json").read_text())
CONTEXT = {"library": {"name": "analytics-python", "version": "2.3.4"}}
ADMIN = {"Authorization": "Bearer contracts-test-admin"}


def stricter(plan: dict[str, Any]) -> dict[str, Any]:
    """The next version of the Shop plan: Order Completed needs a subtotal, Product Viewed a
    product_id, and a Cart Viewed event is planned."""
    plan = copy.deepcopy(plan)
    rules = [
        r
        for r in plan["rules"]
        if not (r["type"] == "TRACK" and r["version"] == 1 and r["key"] == "Order Completed")
    ]
    for rule in rules:
        if rule["key"] == "Order Completed":
            rule["version"] = 1
        if rule["key"] == "Product Viewed":
            rule["jsonSchema"]["properties"]["properties"]["required"] = ["product_id"]
    rules.append(
        {
            "type": "TRACK",
            "key": "Cart Viewed",
            "version": 1,
            "jsonSchema": {
                "properties": {"properties": {"properties": {"cart_id": {"type": "string"}}}}
            },
        }
    )
    plan["rules"] = rules
    return plan


def traffic(seed: int, tag: str) -> list[dict[str, Any]]:
    """A reproducible mix of good, bad, unplanned and over-described events."""
    generator = random.Random(seed)
    events = []
    for index in range(60):
        name = generator.choice(["Order Completed", "Product Viewed", "Cart Viewed", "Signed Up"])
        properties: dict[str, Any] = {}
        if name == "Order Completed":
            if generator.random() < 0.8:
                properties["order_id"] = generator.choice(["o-1", 7])
            if generator.random() < 0.5:
                properties["subtotal"] = generator.choice([10.5, "10.5"])
            if generator.random() < 0.4:
                properties["currency"] = generator.choice(["USD", "GBP"])
        elif name == "Product Viewed" and generator.random() < 0.6:
            properties["product_id"] = generator.choice(["p-1", 3, True])
        elif name == "Cart Viewed" and generator.random() < 0.5:
            properties["cart_id"] = generator.choice(["c-1", 5])
        if generator.random() < 0.3:
            properties["unplanned"] = "x"
        events.append(
            {
                "type": "track",
                "event": name,
                "userId": "u-1",
                "messageId": f"{tag}-{index}",
                "properties": properties,
                "context": CONTEXT,
            }
        )
    return events


CONTRACT = "track: {violations: omit, unplanned_properties: omit, unplanned_events: block}"


async def test_a_shadow_plan_reports_exactly_what_enforcing_it_does(harness: Any) -> None:
    files = {"plans/shop.json": SHOP, "plans/shop-v2.json": stricter(SHOP)}
    plans = "contracts:\n  shop: {$include: plans/shop.json}\n  shop-v2: {$include: plans/shop-v2.json}\n"
    await harness.apply(
        f"version: 1\n{plans}sources:\n  web:\n    contract: {{plan: shop, shadow: shop-v2, {CONTRACT}}}\n",
        files,
    )
    for seed in (1, 2, 3):
        await harness.send(*traffic(seed, f"shadow-{seed}"))
    answer = await harness.client.get("/api/v1/admin/contracts/shadow-report", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    would: dict[str, Counter[str]] = {}
    for row in report["rows"]:
        assert row["source"] == "web" and row["shadow_plan"] == "shop-v2"
        would[row["event_name"]] = Counter({k: v for k, v in row["shadow"].items() if v})
        assert row["seen"] == sum(row["enforced"].values()) > 0
        if row["shadow"].get("blocked"):
            assert any(sample["action"] == "blocked" for sample in row["samples"])
    # Now enforce the shadow plan on the same events (new messageIds: the collector dedupes).
    await harness.apply(
        f"version: 1\n{plans}sources:\n  web:\n    contract: {{plan: shop-v2, {CONTRACT}}}\n",
        files,
    )
    blocked_ids: set[str] = set()
    for seed in (1, 2, 3):
        answer = await harness.send(*traffic(seed, f"enforced-{seed}"))
        blocked_ids |= {d["messageId"] for d in answer["dropped"]}
    did: dict[str, Counter[str]] = {}
    sent = {
        e["messageId"]: e["event"] for seed in (1, 2, 3) for e in traffic(seed, f"enforced-{seed}")
    }
    for message_id in blocked_ids:
        did.setdefault(sent[message_id], Counter())["blocked"] += 1
    for event in await read_events(harness.redis, harness.prefix):
        if not event.message_id.startswith("enforced-"):
            continue
        protocols = event.context.get("protocols") or {}
        if protocols.get("omitted") or protocols.get("omitted_on_violation"):
            action = "omitted"
        elif protocols.get("violations"):
            action = "allowed"
        else:
            action = "passed"
        did.setdefault(event.event, Counter())[action] += 1
    assert did == would
    assert sum(c["blocked"] for c in did.values()) > 0
    assert sum(c["omitted"] for c in did.values()) > 0


async def test_the_violations_report_groups_by_source_event_and_rule(
    harness: Any, admin_settings: Settings
) -> None:
    await harness.apply(
        "version: 1\ncontracts:\n  shop: {$include: plans/shop.json}\n"
        "sources:\n  web:\n    contract: {plan: shop, track: {violations: block}}\n  app: {}\n",
        {"plans/shop.json": SHOP},
    )
    order = {"type": "track", "event": "Order Completed", "userId": "u", "context": CONTEXT}
    await harness.send(
        {**order, "messageId": "a", "properties": {}},
        {**order, "messageId": "b", "properties": {"order_id": 5}},
        {**order, "messageId": "c", "properties": {}},
        {**order, "messageId": "d", "properties": {"order_id": "ok"}},
    )
    answer = await harness.client.get(
        "/api/v1/admin/contracts/violations", params={"since": "1h", "samples": 2}, headers=ADMIN
    )
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["events"] == 3 and report["blocked"] == 3
    groups = {(g["field"], g["type"]): g for g in report["groups"]}
    assert groups[("properties.order_id", "Required")]["count"] == 2
    assert groups[("properties.order_id", "Invalid Type")]["count"] == 1
    assert [s["messageId"] for s in groups[("properties.order_id", "Required")]["samples"]] == [
        "a",
        "c",
    ]
    refused = await harness.client.get(
        "/api/v1/admin/contracts/violations", params={"since": "soon"}, headers=ADMIN
    )
    assert refused.status_code == 400
    # The CLI prints the same report, from Redis.
    cli = build_cli(admin_settings)
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["contracts", "violations", "--since", "24h", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    printed = msgspec.json.decode(result.output)
    assert printed["events"] == 3
    table = await asyncio.to_thread(CliRunner().invoke, cli, ["contracts", "violations"])
    assert "properties.order_id" in table.output and "3 events with violations" in table.output


async def test_violations_are_forwarded_as_violation_generated_events(
    harness: Any, admin_settings: Settings, keys: Any, monkeypatch: Any
) -> None:
    with Receiver() as receiver:
        monkeypatch.setenv("VIOLATIONS_KEY", "wk-violations")
        await harness.apply(
            "version: 1\ncontracts:\n  shop: {$include: plans/shop.json}\n"
            "sources:\n  web:\n    contract:\n      plan: shop\n"
            f"      forward_violations: {{url: '{receiver.url}', write_key: '${{VIOLATIONS_KEY}}'}}\n",
            {"plans/shop.json": SHOP},
        )
        pm = plugin_manager(keys, (contracts_plugin, "contracts"))
        async with running_worker(admin_settings, pm=pm):
            await harness.send(
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": "u",
                    "messageId": "bad-order",
                    "properties": {"currency": "GBP"},
                    "context": {**CONTEXT, "app": {"version": "1.2.3"}},
                }
            )
            events = await asyncio.to_thread(receiver.wait_for, lambda found: len(found) >= 2)
    assert {event["event"] for event in events} == {"Violation Generated"}
    assert {event["userId"] for event in events} == {"schema-violations"}
    fields = {event["properties"]["violationField"]: event for event in events}
    assert set(fields) == {"properties.order_id", "properties.currency"}
    properties = fields["properties.order_id"]["properties"]
    assert properties["eventMessageID"] == "bad-order"
    assert properties["eventName"] == "Order Completed"
    assert properties["eventType"] == "track"
    assert properties["violationType"] == "Required"
    assert properties["sourceID"] == "web" and properties["trackingPlanName"] == "shop"
    assert properties["appVersion"] == "1.2.3"
    assert fields["properties.order_id"]["forwardedFromProject"] == "web"
    [request] = receiver.requests
    assert request.path == "/v1/batch"
    assert request.headers["Authorization"].startswith("Basic ")
