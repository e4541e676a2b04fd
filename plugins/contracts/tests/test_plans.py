"""Reading tracking plans in the shapes Segment and RudderStack export them (the exact shapes of
`shared/reference/plans-config-functions.md` sections 1-2), compiling them, and judging events
exactly as their JSON Schemas say."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from signalsmith import Event, Identify, Track
from signalsmith_contracts.compiled import PlanError, event_json
from signalsmith_contracts.enforce import Enforcer
from signalsmith_contracts.plans import PlanProblem, read_plan
from signalsmith_contracts.rudder_cli import read_rudder_cli
from signalsmith_contracts.section import compile_written
from signalsmith_contracts.settings import SourceContract

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def track(event: str, properties: dict[str, Any], **fields: Any) -> Track:
    return Track(
        message_id=fields.pop("message_id", "m-1"),
        received_at=NOW,
        timestamp=NOW,
        user_id="u-1",
        event=event,
        properties=properties,
        context=fields.pop("context", {"library": {"name": "analytics-python"}}),
        **fields,
    )


def test_a_segment_public_api_export_reads_as_its_rules() -> None:
    read = read_plan(load("segment_shop.json"))
    assert read.format == "segment-public-api"
    assert read.plan.name == "Shop"
    assert [(r.type, r.key, r.version) for r in read.plan.rules] == [
        ("COMMON", None, 1),
        ("TRACK", "Order Completed", 1),
        ("TRACK", "Order Completed", 2),
        ("TRACK", "Product Viewed", 1),
        ("IDENTIFY", None, 1),
    ]
    # The {"data": ...} envelope of GET /tracking-plans/{id}/rules reads the same.
    wrapped = read_plan({"data": {"rules": load("segment_shop.json")["rules"]}}, name="Shop")
    assert wrapped.plan.rules == read.plan.rules


def test_typewriter_plans_are_wrapped_back_into_whole_event_schemas() -> None:
    read = read_plan(load("typewriter_plan.json"))
    assert read.format == "segment-typewriter"
    [rule] = read.plan.rules
    inner = rule.json_schema["properties"]["properties"]  # type: ignore[index]
    assert inner["required"] == ["order_id"]
    assert "eventMetadata" not in inner and "$id" not in inner
    plan = compile_written("tw", load("typewriter_plan.json"))
    enforcer = Enforcer("web", plan, SourceContract(plan="tw"))
    judged = enforcer.judge(track("Order Completed", {"currency": "USD"}))
    assert judged is not None
    assert [v.field for v in judged.violations] == ["properties.order_id"]


def test_a_config_api_plan_reads_global_as_common_and_events_as_track_rules() -> None:
    read = read_plan(load("config_api.json"))
    assert read.format == "segment-config-api"
    assert read.plan.name == "Shop"
    assert [(r.type, r.key) for r in read.plan.rules] == [
        ("COMMON", None),
        ("TRACK", "Order Completed"),
    ]


def test_a_rudderstack_api_plan_reads_each_event_by_its_type_and_section() -> None:
    read = read_plan(load("rudder_api.json"))
    assert read.format == "rudderstack-api"
    assert [(r.type, r.key) for r in read.plan.rules] == [
        ("TRACK", "Order Completed"),
        ("IDENTIFY", None),
    ]
    plan = compile_written("rs", load("rudder_api.json"))
    enforcer = Enforcer("web", plan, SourceContract(plan="rs"))
    judged = enforcer.judge(track("Order Completed", {"order_id": "", "extra": 1}))
    assert judged is not None
    assert {(v.rule, v.field) for v in judged.violations} == {
        ("minLength", "properties.order_id"),
        ("additionalProperties", "properties.extra"),
    }
    identify = Identify(message_id="i", received_at=NOW, timestamp=NOW, user_id="u", traits={})
    judged = enforcer.judge(identify)
    assert judged is not None and judged.violations[0].field == "traits.email"


def test_rudder_cli_yaml_becomes_the_same_rules_as_the_api_json() -> None:
    read = read_rudder_cli(DATA / "rudder-cli")
    assert read.plan.name == "Shop"
    from_api = {
        (r.type, r.key): r.json_schema for r in read_plan(load("rudder_api.json")).plan.rules
    }
    for rule in read.plan.rules:
        cli_section = rule.json_schema["properties"]  # type: ignore[index]
        api_section = from_api[(rule.type, rule.key)]["properties"]  # type: ignore[index]
        section = "properties" if rule.type == "TRACK" else "traits"
        cli_inner, api_inner = cli_section[section], api_section[section]
        assert cli_inner.get("required") == api_inner.get("required")
        assert set(cli_inner["properties"]) == set(api_inner["properties"])
        assert cli_inner.get("additionalProperties") == api_inner.get("additionalProperties")
    order = read.plan.rules[0].json_schema["properties"]["properties"]["properties"]  # type: ignore[index]
    assert order["order_id"] == {"type": "string", "minLength": 1}
    assert order["revenue"] == {"type": ["number", "null"]}


# --- the same verdicts as the JSON Schemas say --------------------------------------------------


def candidate_events() -> list[Event]:
    """Every combination of good and bad values of the Shop plan's properties."""
    values = {
        "order_id": ["A-1", 17, None, "<absent>"],
        "currency": ["USD", "EUR", "GBP", 3, "<absent>"],
        "subtotal": [9.5, "9.5", "<absent>"],
    }
    events: list[Event] = []
    for number, combination in enumerate(itertools.product(*values.values())):
        properties = {
            name: value
            for name, value in zip(values, combination, strict=True)
            if value != "<absent>"
        }
        for version in (None, 1, 2, 7):
            context: dict[str, Any] = {"library": {"name": "analytics-python"}}
            if version is not None:
                context["protocols"] = {"event_version": version}
            events.append(
                track("Order Completed", properties, context=context, message_id=f"m-{number}")
            )
    for product_id in ("p-1", 7, 7.5, True, None):
        events.append(track("Product Viewed", {"product_id": product_id}))
        events.append(track("Product Viewed", {"product_id": product_id}, context={}))
    return events


def fields_of(validator: jsonschema.Draft7Validator, body: dict[str, Any]) -> set[str]:
    """Segment's field of each error: the property's path (a missing one named itself)."""
    fields = set()
    for error in validator.iter_errors(body):
        path = [str(part) for part in error.absolute_path]
        if error.validator == "required":
            fields |= {
                ".".join([*path, name])
                for name in error.validator_value
                if name not in error.instance
            }
        else:
            fields.add(".".join(path) or "(root)")
    return fields


def test_a_segment_export_enforces_the_verdicts_its_json_schemas_give() -> None:
    """Differential: each event is judged by the compiled plan and by the reference validator
    (python-jsonschema, draft-07) on the event's Segment JSON, with the rule Segment picks."""
    written = load("segment_shop.json")
    plan = compile_written("shop", written)
    enforcer = Enforcer("web", plan, SourceContract(plan="shop"))
    schemas = {(r["type"], r["key"], r["version"]): r["jsonSchema"] for r in written["rules"]}
    common = jsonschema.Draft7Validator(schemas[("COMMON", None, 1)])
    checked = 0
    for event in candidate_events():
        assert isinstance(event, Track)
        version = (event.context.get("protocols") or {}).get("event_version")
        versions = sorted(v for (t, k, v) in schemas if t == "TRACK" and k == event.event)
        chosen = version if version in versions else versions[0]
        rule = jsonschema.Draft7Validator(schemas[("TRACK", event.event, chosen)])
        body = event_json(event)
        expected = {field for validator in (rule, common) for field in fields_of(validator, body)}
        judged = enforcer.judge(event)
        got = set() if judged is None else {violation.field for violation in judged.violations}
        assert got == expected, (body, got, expected)
        checked += 1
    assert checked > 200


# --- bad plans ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "path", "words"),
    [
        (
            {"rules": [{"type": "TRACK", "key": "A", "jsonSchema": {"type": "strin"}}]},
            ("rules", 0, "jsonSchema", "type"),
            "not valid JSON Schema",
        ),
        (
            {
                "rules": [
                    {
                        "type": "TRACK",
                        "key": "A",
                        "jsonSchema": {
                            "properties": {
                                "properties": {"properties": {"x": {"pattern": "(?!foo)bar"}}}
                            }
                        },
                    }
                ]
            },
            ("rules", 0, "jsonSchema", "properties", "properties", "properties", "x", "pattern"),
            "does not compile",
        ),
        (
            {"rules": [{"type": "TRACK", "key": "A", "jsonSchema": {"$ref": "http://x/s.json"}}]},
            ("rules", 0, "jsonSchema"),
            "",
        ),
        ({"rules": [{"type": "TRAK", "key": "A"}]}, ("rules", 0, "type"), "one of COMMON"),
        ({"events": [{"eventType": "track"}]}, ("events", 0, "name"), "needs its name"),
        ({"rule": []}, (), "not a tracking plan"),
        (
            {"rules": [{"type": "TRACK", "key": "A"}, {"type": "TRACK", "key": "A"}]},
            ("rules", 1),
            "twice",
        ),
    ],
)
def test_a_plan_that_cannot_be_checked_is_refused_naming_the_rule_and_path(
    written: dict[str, Any], path: tuple[Any, ...], words: str
) -> None:
    with pytest.raises((PlanError, PlanProblem)) as refused:
        compile_written("bad", written)
    assert refused.value.path[: len(path)] == path
    assert words in refused.value.message
