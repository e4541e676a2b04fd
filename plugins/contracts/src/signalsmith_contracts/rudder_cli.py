"""rudder-cli's YAML ("tracking plans as code") read into a plan of Segment-style rules.

A directory (or one file) of YAML documents, each ``version`` / ``kind`` / ``metadata.name`` /
``spec``: ``properties``, ``events``, ``custom-types``, ``categories`` and ``tracking-plan``
(`shared/reference/plans-config-functions.md` section 2.2). References are v1 (``#property:id``)
or legacy (``#/properties/<group>/<id>``). Each track ``event_rule`` becomes a TRACK rule keyed
by the event's name, identify/group rules IDENTIFY/GROUP rules with the properties placed by
``identity_section``, snake_case config keywords become JSON Schema's, categories become labels.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Any

import yaml

from signalsmith_contracts.plans import (
    DRAFT_07,
    PlanProblem,
    ReadPlan,
    ReadRule,
    Rule,
    TrackingPlan,
    config_keywords,
    rudder_section_schema,
    types_of,
)


def _id_of(reference: Any) -> str:
    """``#property:order_id``, ``#/properties/shop/order_id`` -> ``order_id``."""
    if not isinstance(reference, str):
        raise PlanProblem((), f"expected a reference such as '#property:<id>', got {reference!r}")
    if ":" in reference:
        return reference.split(":", 1)[1]
    return reference.rstrip("/").rsplit("/", 1)[-1]


class _Catalog:
    def __init__(self) -> None:
        self.properties: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.custom_types: dict[str, dict[str, Any]] = {}
        self.categories: dict[str, str] = {}
        self.plans: list[tuple[str, dict[str, Any]]] = []

    def add(self, document: Any, where: str) -> None:
        if not isinstance(document, dict) or "kind" not in document:
            return
        kind = document["kind"]
        spec = document.get("spec") or {}
        if kind == "properties":
            for prop in spec.get("properties") or []:
                self.properties[str(prop.get("id"))] = prop
        elif kind == "events":
            for event in spec.get("events") or []:
                self.events[str(event.get("id"))] = event
        elif kind == "custom-types":
            for custom in spec.get("types") or []:
                self.custom_types[str(custom.get("id"))] = custom
        elif kind == "categories":
            for category in spec.get("categories") or []:
                self.categories[str(category.get("id"))] = str(category.get("name", ""))
        elif kind in ("tracking-plan", "tp"):
            self.plans.append((where, spec))

    def property_schema(self, reference: Any, depth: int = 0) -> tuple[str, dict[str, Any]]:
        identifier = _id_of(reference)
        prop = self.properties.get(identifier)
        if prop is None:
            raise PlanProblem((), f"property {identifier!r} is referenced but not defined")
        return str(prop.get("name") or identifier), self.type_schema(prop, depth)

    def type_schema(self, written: dict[str, Any], depth: int) -> dict[str, Any]:
        if depth > 16:
            raise PlanProblem((), "custom types nest more than 16 deep (a cycle?)")
        schema: dict[str, Any] = {}
        types = types_of(written.get("types") or written.get("type"), ())
        plain: list[str] = []
        for kind in types:
            if kind.startswith("#"):
                custom = self.custom_types.get(_id_of(kind))
                if custom is None:
                    raise PlanProblem((), f"custom type {kind!r} is referenced but not defined")
                schema |= self.type_schema(custom, depth + 1)
            else:
                plain.append(kind)
        if plain:
            schema["type"] = plain[0] if len(plain) == 1 else plain
        item_types = types_of(written.get("item_types") or written.get("item_type"), ())
        if item_types:
            schema["items"] = {"type": item_types[0] if len(item_types) == 1 else item_types}
        schema |= config_keywords(written.get("config") or written.get("propConfig"), ())
        nested = written.get("properties")
        if nested:
            schema |= self.object_schema(nested, depth + 1)
        return schema

    def object_schema(self, listed: list[Any], depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for item in listed:
            reference = item.get("property") or item.get("$ref")
            name, schema = self.property_schema(reference, depth)
            if item.get("properties"):
                schema = {**schema, **self.object_schema(item["properties"], depth + 1)}
            if item.get("additional_properties") is False:
                schema["additionalProperties"] = False
            properties[name] = schema
            if item.get("required") is True:
                required.append(name)
        schema = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        return schema


def read_rudder_cli(path: FilePath, *, name: str = "") -> ReadPlan:
    """The tracking plan the YAML files at ``path`` (a directory or a file) declare."""
    files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
    catalog = _Catalog()
    for file in files:
        try:
            for document in yaml.safe_load_all(file.read_text()):
                catalog.add(document, str(file))
        except yaml.YAMLError as error:
            raise PlanProblem((), f"{file}: not YAML: {error}") from None
    if not catalog.plans:
        raise PlanProblem((), f"no `kind: tracking-plan` document in {path}")
    if len(catalog.plans) > 1 and not name:
        found = ", ".join(str(spec.get("id")) for _, spec in catalog.plans)
        raise PlanProblem(
            (), f"{path} holds several tracking plans ({found}); choose one with --name"
        )
    where, spec = next(
        (
            (w, s)
            for w, s in catalog.plans
            if not name or name in (s.get("id"), s.get("display_name"))
        ),
        catalog.plans[0],
    )
    rules: list[ReadRule] = []
    for index, written in enumerate(spec.get("rules") or []):
        try:
            rules.append(ReadRule(rule=_rule(catalog, written), written_at=("rules", index)))
        except PlanProblem as problem:
            raise PlanProblem(
                ("rules", index), f"{where}: rule {written.get('id', index)!r}: {problem.message}"
            ) from None
    plan = TrackingPlan(
        name=name or str(spec.get("display_name") or spec.get("id") or ""),
        description=str(spec.get("description") or ""),
        rules=[r.rule for r in rules],
    )
    return ReadPlan(plan=plan, rules=rules, format="rudder-cli")


def _rule(catalog: _Catalog, written: dict[str, Any]) -> Rule:
    event_ref = written.get("event")
    if isinstance(event_ref, dict):  # legacy: {$ref, allow_unplanned, identity_section}
        section = event_ref.get("identity_section")
        event_ref = event_ref.get("$ref")
    else:
        section = written.get("identity_section")
    event = catalog.events.get(_id_of(event_ref))
    if event is None:
        raise PlanProblem((), f"event {event_ref!r} is referenced but not defined")
    event_type = str(event.get("event_type", "track"))
    if event_type not in ("track", "identify", "group", "page", "screen"):
        raise PlanProblem(
            (), f"event_type {event_type!r} is not one of track, identify, group, page, screen"
        )
    inner = catalog.object_schema(written.get("properties") or [], 0)
    if written.get("additional_properties") is False:
        inner["additionalProperties"] = False
    section = section or ("traits" if event_type in ("identify", "group") else "properties")
    schema = rudder_section_schema(section, inner)
    schema["$schema"] = DRAFT_07
    if event.get("description"):
        schema["description"] = event["description"]
    category = event.get("category")
    if category:
        schema["labels"] = {"category": catalog.categories.get(_id_of(category), _id_of(category))}
    return Rule(
        type=event_type.upper(),  # type: ignore[arg-type]
        key=str(event["name"])
        if event_type in ("track", "page", "screen") and event.get("name")
        else None,
        version=1,
        json_schema=schema,
    )
