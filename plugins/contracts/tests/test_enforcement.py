"""Contracts enforced at collection: each rule type, each handling mode, single events and mixed
batches, hostile events, violations recorded and observed, shadow plans. Through the real
collector app, a workspace applied through the admin API, and the real Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import signalsmith_contracts.plugin as contracts_plugin
from signalsmith import Outcome, Settings, hookimpl
from signalsmith.testing import StaticKeys, collector_client, plugin_manager
from signalsmith.testing.stream import read_events

SHOP = (Path(__file__).parent / "data" / "segment_shop.json").read_text()
CONTEXT = {"library": {"name": "analytics-python", "version": "2.3.4"}}


def document(contract: str, plans: str = "  shop: {$include: plans/shop.json}\n") -> str:
    return (
        f"version: 1\ncontracts:\n{plans}sources:\n  web:\n    contract: {contract}\n  app: {{}}\n"
    )


def order(message_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": "u-1",
        "messageId": message_id,
        "properties": properties,
        "context": CONTEXT,
    }


def by_id(events: list[Any]) -> dict[str, Any]:
    return {event.message_id: event for event in events}


# --- rule types -----------------------------------------------------------------------------------

RULES_PLAN = {
    "name": "rules",
    "rules": [
        {
            "type": "TRACK",
            "key": "Checked",
            "version": 1,
            "jsonSchema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {
                    "properties": {
                        "type": "object",
                        "required": ["id"],
                        "additionalProperties": False,
                        "properties": {
                            "id": {"type": "string"},
                            "count": {"type": "integer", "minimum": 1, "maximum": 10},
                            "price": {"type": "number", "exclusiveMinimum": 0},
                            "ok": {"type": "boolean"},
                            "note": {"type": ["string", "null"], "maxLength": 5},
                            "tier": {"enum": ["gold", "silver"]},
                            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                            "at": {"type": "string", "format": "date-time"},
                            "address": {
                                "type": "object",
                                "required": ["city"],
                                "properties": {"city": {"type": "string", "minLength": 2}},
                            },
                            "items": {
                                "type": "array",
                                "maxItems": 3,
                                "items": {
                                    "type": "object",
                                    "properties": {"sku": {"type": "string"}},
                                    "required": ["sku"],
                                },
                            },
                        },
                    }
                },
            },
        }
    ],
}

GOOD = {
    "id": "a",
    "count": 3,
    "price": 9.5,
    "ok": True,
    "note": None,
    "tier": "gold",
    "code": "EUR",
    "at": "2026-12-01T10:00:00.000Z",
    "address": {"city": "Lyon"},
    "items": [{"sku": "X"}],
}


@pytest.mark.parametrize(
    ("change", "rule", "field", "violation_type"),
    [
        ({"id": None}, "type", "properties.id", "Invalid Type"),
        ({"id": "<absent>"}, "required", "properties.id", "Required"),
        ({"count": 2.5}, "type", "properties.count", "Invalid Type"),
        ({"count": 11}, "maximum", "properties.count", "Invalid Value"),
        ({"count": 0}, "minimum", "properties.count", "Invalid Value"),
        ({"price": 0}, "exclusiveMinimum", "properties.price", "Invalid Value"),
        ({"ok": "yes"}, "type", "properties.ok", "Invalid Type"),
        ({"note": "too long"}, "maxLength", "properties.note", "Invalid Value"),
        ({"note": 5}, "type", "properties.note", "Invalid Type"),
        ({"tier": "bronze"}, "enum", "properties.tier", "Invalid Value"),
        ({"code": "eur"}, "pattern", "properties.code", "Invalid Value"),
        ({"at": "yesterday"}, "format", "properties.at", "Invalid Value"),
        ({"address": {"city": "L"}}, "minLength", "properties.address.city", "Invalid Value"),
        ({"address": {}}, "required", "properties.address.city", "Required"),
        ({"items": [{"sku": "X"}, {}]}, "required", "properties.items[1].sku", "Required"),
        ({"items": [{"sku": 1}]}, "type", "properties.items[0].sku", "Invalid Type"),
        ({"items": [{"sku": "a"}] * 4}, "maxItems", "properties.items", "Invalid Value"),
        ({"surprise": 1}, "additionalProperties", "properties.surprise", "Unplanned Property"),
    ],
)
async def test_each_rule_type_names_its_violation(
    harness: Any,
    change: dict[str, Any],
    rule: str,
    field: str,
    violation_type: str,
) -> None:
    await harness.apply(
        document("{plan: rules}", "  rules: {$include: plans/rules.json}\n"),
        {"plans/rules.json": RULES_PLAN},
    )
    properties = {**GOOD, **change}
    properties = {k: v for k, v in properties.items() if v != "<absent>"}
    answer = await harness.send(
        {
            "type": "track",
            "event": "Checked",
            "userId": "u",
            "messageId": "bad",
            "properties": properties,
        },
        {
            "type": "track",
            "event": "Checked",
            "userId": "u",
            "messageId": "good",
            "properties": GOOD,
        },
    )
    assert answer["accepted"] == 2 and answer["dropped"] == []
    events = by_id(await read_events(harness.redis, harness.prefix))
    assert "protocols" not in events["good"].context
    [violation] = events["bad"].context["protocols"]["violations"]
    assert violation["field"] == field
    assert violation["type"] == violation_type
    assert violation["description"]
    [record] = await harness.records()
    assert record.message_id == "bad" and record.handling == "allowed"
    assert [(v.rule, v.field) for v in record.violations] == [(rule, field)]


# --- handling modes -------------------------------------------------------------------------------


async def test_violations_allowed_are_delivered_flagged_and_recorded(harness: Any) -> None:
    await harness.apply(document("{plan: shop}"), {"plans/shop.json": SHOP})
    await harness.send(order("bad", currency="GBP"), order("good", order_id="1"))
    events = by_id(await read_events(harness.redis, harness.prefix))
    protocols = events["bad"].context["protocols"]
    assert protocols["sourceId"] == "web"
    assert {v["field"] for v in protocols["violations"]} == {
        "properties.order_id",
        "properties.currency",
    }
    assert events["bad"].properties == {"currency": "GBP"}
    assert "protocols" not in events["good"].context
    [record] = await harness.records()
    assert record.handling == "allowed" and record.event_name == "Order Completed"


async def test_omit_strips_offending_and_unplanned_properties_and_says_so(harness: Any) -> None:
    await harness.apply(
        document("{plan: shop, track: {violations: omit, unplanned_properties: omit}}"),
        {"plans/shop.json": SHOP},
    )
    await harness.send(order("m", order_id="1", currency="GBP", coupon="X", channel="web"))
    [event] = await read_events(harness.redis, harness.prefix)
    assert event.properties == {"order_id": "1"}
    protocols = event.context["protocols"]
    assert protocols["omitted_on_violation"] == ["properties.currency"]
    assert sorted(protocols["omitted"]) == ["properties.channel", "properties.coupon"]
    assert [v["field"] for v in protocols["violations"]] == ["properties.currency"]
    [record] = await harness.records()
    assert record.handling == "omitted"
    # The record keeps the event as it arrived.
    assert json.loads(record.event)["properties"]["currency"] == "GBP"


async def test_block_drops_the_event_keeps_it_whole_and_its_neighbours_go_on(
    harness: Any,
) -> None:
    await harness.apply(
        document("{plan: shop, track: {violations: block}}"), {"plans/shop.json": SHOP}
    )
    answer = await harness.send(
        order("first", order_id="1"),
        order("blocked", currency="USD"),
        order("last", order_id="3", currency="EUR"),
    )
    assert answer["accepted"] == 2
    assert answer["dropped"] == [
        {
            "index": 1,
            "messageId": "blocked",
            "stage": "validate",
            "reason": "blocked_by_contract",
            "detail": "Required: properties.order_id: order_id is required",
        }
    ]
    events = await read_events(harness.redis, harness.prefix)
    assert [e.message_id for e in events] == ["first", "last"]
    [record] = await harness.records()
    assert record.handling == "blocked"
    assert record.violations[0].type == "Required"
    assert json.loads(record.event)["messageId"] == "blocked"


@pytest.mark.parametrize("mode", ["allow", "block"])
async def test_unplanned_events_are_allowed_or_blocked(harness: Any, mode: str) -> None:
    await harness.apply(
        document(f"{{plan: shop, track: {{unplanned_events: {mode}}}}}"), {"plans/shop.json": SHOP}
    )
    unplanned = {**order("unplanned"), "event": "Not Planned"}
    answer = await harness.send(unplanned, order("planned", order_id="1"))
    events = by_id(await read_events(harness.redis, harness.prefix))
    records = await harness.records()
    if mode == "allow":
        assert set(events) == {"unplanned", "planned"}
        assert records == []
        assert "protocols" not in events["unplanned"].context
    else:
        assert set(events) == {"planned"}
        assert [d["messageId"] for d in answer["dropped"]] == ["unplanned"]
        [record] = records
        assert record.violations[0].type == "Unplanned Event"
        assert record.violations[0].rule == "unplanned_event"


async def test_identify_traits_and_the_common_rule_have_their_own_handling(
    harness: Any,
) -> None:
    plan = json.loads(SHOP)
    # The collector fills context.library in; a common rule on userId can fail.
    plan["rules"][0]["jsonSchema"] = {
        "type": "object",
        "properties": {"userId": {"type": "string", "pattern": "^u"}},
    }
    await harness.apply(
        document(
            "{plan: shop, identify: {unplanned_traits: omit, violations: block}, "
            "common: {violations: block}}"
        ),
        {"plans/shop.json": plan},
    )
    answer = await harness.send(
        {
            "type": "identify",
            "userId": "u",
            "messageId": "traits",
            "traits": {"email": "a@b.c", "plan": "pro"},
            "context": CONTEXT,
        },
        {
            "type": "identify",
            "userId": "u",
            "messageId": "bad-email",
            "traits": {"email": 5},
            "context": CONTEXT,
        },
        {
            "type": "track",
            "userId": "x-user",
            "event": "Order Completed",
            "messageId": "bad-user",
            "properties": {"order_id": "1"},
            "context": CONTEXT,
        },
    )
    dropped = {d["messageId"] for d in answer["dropped"]}
    events = by_id(await read_events(harness.redis, harness.prefix))
    assert dropped == {"bad-email", "bad-user"}
    assert events["traits"].traits == {"email": "a@b.c"}
    assert events["traits"].context["protocols"]["omitted"] == ["traits.plan"]
    records = {r.message_id: r for r in await harness.records()}
    assert records["bad-user"].violations[0].field == "userId"


async def test_event_version_picks_the_rule_version_and_the_oldest_by_default(
    harness: Any,
) -> None:
    await harness.apply(
        document("{plan: shop, track: {violations: block}}"), {"plans/shop.json": SHOP}
    )
    v2 = {**CONTEXT, "protocols": {"event_version": 2}}
    answer = await harness.send(
        order("v1", order_id="1"),  # no subtotal: fine under version 1
        {**order("v2", order_id="1"), "context": v2},  # version 2 requires subtotal
        {**order("v9", order_id="1"), "context": {**CONTEXT, "protocols": {"event_version": 9}}},
    )
    assert [d["messageId"] for d in answer["dropped"]] == ["v2"]
    [record] = await harness.records()
    assert record.event_version == 2
    assert record.violations[0].field == "properties.subtotal"


# --- hostile events -------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "properties",
    [
        {"id": nested(60)},
        {"id": "a", "items": [{"sku": i} for i in range(3000)]},
        {"id": "a", "code": "A" * 30_000},
        {"id": "a", "items": [[[[[]]]]] * 2000},
    ],
    ids=["deep", "huge-array", "huge-string", "nested-arrays"],
)
async def test_hostile_events_get_a_clear_violation_and_no_5xx(
    harness: Any, properties: dict[str, Any]
) -> None:
    await harness.apply(
        document(
            "{plan: rules, track: {violations: block}}", "  rules: {$include: plans/rules.json}\n"
        ),
        {"plans/rules.json": RULES_PLAN},
    )
    answer = await harness.client.post(
        "/v1/batch",
        json={
            "batch": [
                {
                    "type": "track",
                    "event": "Checked",
                    "userId": "u",
                    "messageId": "h",
                    "properties": properties,
                },
                {
                    "type": "track",
                    "event": "Checked",
                    "userId": "u",
                    "messageId": "ok",
                    "properties": GOOD,
                },
            ]
        },
        headers=harness.auth,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    if body["rejected"]:  # too large for the collector: refused there, with its reason
        assert body["rejected"][0]["messageId"] == "h"
    else:
        assert [d["messageId"] for d in body["dropped"]] == ["h"]
        [record] = await harness.records()
        assert record.violations and len(record.violations) <= 50
    assert [e.message_id for e in await read_events(harness.redis, harness.prefix)] == ["ok"]


# --- observers, workspace refusals ----------------------------------------------------------------


async def test_violations_are_outcomes_observers_see(
    admin_settings: Settings, keys: StaticKeys, make_harness: Callable[..., Any]
) -> None:
    seen: list[Outcome] = []

    class Observer:
        @hookimpl
        def observe_outcomes(self, outcomes: list[Outcome]) -> None:
            seen.extend(outcomes)

    pm = plugin_manager(keys, (contracts_plugin, "contracts"), (Observer(), "observer"))
    async with collector_client(admin_settings, pm=pm) as client:
        harness = make_harness(client)
        await harness.apply(
            document("{plan: shop, track: {violations: block}}"), {"plans/shop.json": SHOP}
        )
        await harness.send(order("bad"), order("good", order_id="1"))
    violations = [o for o in seen if o.status == "violation"]
    assert [(o.stage, o.message_id, o.reason) for o in violations] == [
        ("validate", "bad", "Required")
    ]
    assert violations[0].event is not None
    dropped = [o for o in seen if o.status == "dropped"]
    assert [(o.message_id, o.reason) for o in dropped] == [("bad", "blocked_by_contract")]


async def test_bad_plans_and_references_are_refused_when_applied(harness: Any) -> None:
    bad_plan = {
        "rules": [
            {
                "type": "TRACK",
                "key": "Order Completed",
                "jsonSchema": {
                    "properties": {"properties": {"properties": {"x": {"pattern": "(?<=a)b"}}}}
                },
            }
        ]
    }
    errors = await harness.refused(
        "version: 1\ncontracts:\n  shop: {$include: plans/shop.json}\n"
        "sources:\n  web:\n    contract: {plan: shopp, shadow: other}\n",
        {"plans/shop.json": bad_plan},
    )
    messages = {error["path"]: error["message"] for error in errors}
    [pattern_path] = [path for path in messages if path.startswith("contracts.shop")]
    assert pattern_path.endswith(".pattern")
    assert "event 'Order Completed' version 1" in messages[pattern_path]
    assert "does not compile" in messages[pattern_path]
    assert "plan 'shopp' is not declared (declared: shop)" in messages["sources.web.contract.plan"]
    assert "sources.web.contract.shadow" in messages
    missing = await harness.refused(
        "version: 1\ncontracts:\n  shop: {$include: plans/missing.json}\n"
    )
    assert "plans/missing.json" in json.dumps(missing)
    unknown = await harness.refused(
        "version: 1\ncontracts: {shop: {rules: []}}\n"
        "sources: {web: {contract: {plan: shop, track: {violation: block}}}}\n"
    )
    assert "violation" in json.dumps(unknown)


async def test_a_source_without_a_contract_is_not_touched(harness: Any) -> None:
    await harness.apply(
        document("{plan: shop, track: {unplanned_events: block}}"), {"plans/shop.json": SHOP}
    )
    await harness.send({**order("other"), "event": "Anything"}, key="app")
    [event] = await read_events(harness.redis, harness.prefix)
    assert event.message_id == "other" and "protocols" not in event.context
