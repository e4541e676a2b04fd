"""The cost of checking events against a tracking plan, by validator.

A realistic plan: 50 track events of 10 properties each (strings, a pattern, an enum, numbers
with bounds, integers, booleans, a date-time, a nested object, an array of objects), as Segment
Public API rules. A batch of 100 events across those names, all valid, then the same with one
violation in each. Every validator checks each event's properties against the schema of its
name; the figure is CPU time per event (the median of repeated runs over the batch):

- ``signalsmith``: the plugin's whole judgement (``Enforcer.judge``: plan lookup, version, the
  event's rule through jsonschema-rs, the common rule, the violations it lists), on the events
  as the collector holds them (Structs);
- ``jsonschema-rs``: ``jsonschema_rs.validator_for(schema)``; ``is_valid`` for valid events,
  ``iter_errors`` (every error, which omitting offending properties needs) for invalid ones;
- ``fastjsonschema``: ``fastjsonschema.compile(schema)``, which stops at the first error;
- ``msgspec``: a Struct type generated per event from the schema (types, enums as Literal,
  bounds and patterns as Meta), ``msgspec.convert(properties, Type)``; first error only;
- ``jsonschema``: the pure-Python reference, ``Draft7Validator.iter_errors``.

    .venv/bin/pip install fastjsonschema   # the one candidate the plugin does not install
    .venv/bin/python bench/contracts_validate.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from signalsmith import Track
from signalsmith_contracts.plans import read_plan
from signalsmith_contracts.section import compile_written
from signalsmith_contracts.settings import SourceContract

EVENTS = 50
BATCH = 100


def property_schemas(index: int) -> tuple[dict[str, Any], list[str]]:
    properties = {
        "order_id": {"type": "string", "minLength": 1},
        "currency": {"type": "string", "pattern": "^(USD|EUR|GBP)$"},
        "channel": {"type": "string", "enum": ["web", "ios", "android"]},
        "revenue": {"type": "number", "minimum": 0},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
        "coupon": {"type": ["string", "null"]},
        "first_order": {"type": "boolean"},
        "ordered_at": {"type": "string", "format": "date-time"},
        "shipping": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city"],
        },
        "products": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "price": {"type": "number"}},
                "required": ["sku"],
            },
        },
    }
    return properties, ["order_id", "currency", "revenue"]


def plan() -> dict[str, Any]:
    rules = []
    for index in range(EVENTS):
        properties, required = property_schemas(index)
        rules.append(
            {
                "type": "TRACK",
                "key": f"Event {index}",
                "version": 1,
                "jsonSchema": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": {
                        "context": {},
                        "traits": {},
                        "properties": {
                            "type": "object",
                            "properties": properties,
                            "required": required,
                        },
                    },
                    "required": ["properties"],
                },
            }
        )
    return {"name": "bench", "rules": rules}


def valid_properties(index: int) -> dict[str, Any]:
    return {
        "order_id": f"o-{index}",
        "currency": "USD",
        "channel": "web",
        "revenue": 42.5,
        "quantity": 2,
        "coupon": None,
        "first_order": True,
        "ordered_at": "2026-11-01T10:00:00.000Z",
        "shipping": {"city": "Lyon", "zip": "69001"},
        "products": [{"sku": "A-1", "price": 20.0}, {"sku": "B-2", "price": 22.5}],
    }


def events(*, invalid: bool) -> list[Track]:
    now = datetime.now(UTC)
    made = []
    for index in range(BATCH):
        properties = valid_properties(index)
        if invalid:
            properties["currency"] = "usd"  # breaks the pattern
        made.append(
            Track(
                message_id=f"m-{index}",
                received_at=now,
                timestamp=now,
                user_id="u",
                event=f"Event {index % EVENTS}",
                properties=properties,
                context={"library": {"name": "bench"}},
            )
        )
    return made


def per_event_ns(run: Callable[[], None], count: int, repeat: int) -> float:
    run()  # warm
    timings = []
    for _ in range(repeat):
        started = time.process_time_ns()
        run()
        timings.append(time.process_time_ns() - started)
    return statistics.median(timings) / count


# --- candidates ---------------------------------------------------------------------------------


def signalsmith_candidate() -> tuple[Callable[[list[Track]], Any], Callable[[list[Track]], Any]]:
    from signalsmith_contracts.enforce import Enforcer

    compiled = compile_written("bench", plan())
    enforcer = Enforcer("web", compiled, SourceContract(plan="bench"))
    judge = enforcer.judge

    def run(batch: list[Track]) -> Any:
        return [judge(event) for event in batch]

    return run, run


def property_schema_by_name() -> dict[str, dict[str, Any]]:
    read = read_plan(plan())
    return {
        rule.key: rule.json_schema["properties"]["properties"]  # type: ignore[index]
        for rule in read.plan.rules
    }


def jsonschema_rs_candidate() -> tuple[Callable[..., Any], Callable[..., Any]]:
    import jsonschema_rs

    validators = {
        name: jsonschema_rs.validator_for(schema)
        for name, schema in property_schema_by_name().items()
    }

    def valid(batch: list[Track]) -> Any:
        return [validators[event.event].is_valid(event.properties) for event in batch]

    def invalid(batch: list[Track]) -> Any:
        return [list(validators[event.event].iter_errors(event.properties)) for event in batch]

    return valid, invalid


def fastjsonschema_candidate() -> tuple[Callable[..., Any], Callable[..., Any]]:
    import fastjsonschema

    validators = {
        name: fastjsonschema.compile(schema) for name, schema in property_schema_by_name().items()
    }

    def run(batch: list[Track]) -> Any:
        found = []
        for event in batch:
            try:
                validators[event.event](event.properties)
                found.append(None)
            except fastjsonschema.JsonSchemaException as error:
                found.append(error)
        return found

    return run, run


def msgspec_type(name: str, schema: dict[str, Any]) -> type:
    """A Struct generated from an object schema (the subset msgspec can express)."""

    def annotation(sub: dict[str, Any], field: str) -> Any:
        kinds = sub.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        meta: dict[str, Any] = {}
        if "pattern" in sub:
            meta["pattern"] = sub["pattern"]
        if "minLength" in sub:
            meta["min_length"] = sub["minLength"]
        if "minimum" in sub:
            meta["ge"] = sub["minimum"]
        if "maximum" in sub:
            meta["le"] = sub["maximum"]
        if "enum" in sub:
            return Literal[tuple(sub["enum"])]
        if kinds == ["object"]:
            return msgspec_type(f"{name}_{field}", sub)
        if kinds == ["array"]:
            return list[annotation(sub["items"], field + "_item")]
        base = {
            "string": str,
            "number": float,
            "integer": int,
            "boolean": bool,
            "null": type(None),
        }
        union = None
        for kind in kinds:
            union = base[kind] if union is None else union | base[kind]
        return Annotated[union, msgspec.Meta(**meta)] if meta else union

    required = set(schema.get("required", []))
    fields = []
    for field, sub in schema["properties"].items():
        if field in required:
            fields.append((field, annotation(sub, field)))
        else:
            fields.append((field, annotation(sub, field) | None, None))
    return msgspec.defstruct(name.replace(" ", "_"), fields, kw_only=True)


def msgspec_candidate() -> tuple[Callable[..., Any], Callable[..., Any]]:
    types = {name: msgspec_type(name, schema) for name, schema in property_schema_by_name().items()}

    def run(batch: list[Track]) -> Any:
        found = []
        for event in batch:
            try:
                msgspec.convert(event.properties, types[event.event])
                found.append(None)
            except msgspec.ValidationError as error:
                found.append(error)
        return found

    return run, run


def jsonschema_candidate() -> tuple[Callable[..., Any], Callable[..., Any]]:
    import jsonschema

    validators = {
        name: jsonschema.Draft7Validator(schema)
        for name, schema in property_schema_by_name().items()
    }

    def run(batch: list[Track]) -> Any:
        return [list(validators[event.event].iter_errors(event.properties)) for event in batch]

    return run, run


CANDIDATES = {
    "signalsmith": (signalsmith_candidate, "every violation"),
    "jsonschema-rs": (jsonschema_rs_candidate, "every violation"),
    "fastjsonschema": (fastjsonschema_candidate, "first only"),
    "msgspec": (msgspec_candidate, "first only"),
    "jsonschema": (jsonschema_candidate, "every violation"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    options = parser.parse_args()
    good, bad = events(invalid=False), events(invalid=True)
    print(
        f"{EVENTS} events x 10 properties, batches of {BATCH}; CPU µs per event (median of "
        f"{options.repeat}); {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}\n"
    )
    print("| validator | valid event | invalid event | errors reported |")
    print("|---|---:|---:|---|")
    for name, (make, reports) in CANDIDATES.items():
        try:
            valid, invalid = make()
        except ImportError as error:
            print(f"| {name} | not installed ({error.name}) | | |")
            continue
        repeat = options.repeat if name != "jsonschema" else max(5, options.repeat // 20)
        good_ns = per_event_ns(lambda v=valid: v(good), BATCH, repeat)
        bad_ns = per_event_ns(lambda i=invalid: i(bad), BATCH, repeat)
        print(f"| {name} | {good_ns / 1000:.2f} | {bad_ns / 1000:.2f} | {reports} |")


if __name__ == "__main__":
    main()
