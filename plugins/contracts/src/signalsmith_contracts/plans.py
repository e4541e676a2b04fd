"""Tracking plans as SignalSmith stores them: Segment's Public API rules, and the exports it reads.

A plan is a list of rules, each a whole-event JSON Schema (draft-07) for one message type, keyed
by event name for TRACK and versioned (`shared/reference/plans-config-functions.md`, sections
1-2). The workspace takes a plan in any of the JSON shapes a team already has, recognised by
their shape, and ``signalsmith contracts import`` converts them (and rudder-cli's YAML) to this
one:

- Segment Public API: ``{"name", "rules": [{type, key, version, jsonSchema}]}``, bare or inside
  ``{"data": {...}}`` (``GET /tracking-plans/{id}`` and ``.../rules`` merged or alone);
- Typewriter's ``plan.json``: the same, with TRACK schemas unwrapped (``eventMetadata``);
- Segment's Config API: ``{"display_name", "rules": {"global", "events": [...], ...}}``;
- RudderStack's Data Catalog API: ``{"name", "events": [{eventType, name, rules | properties}]}``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from signalsmith_contracts.schema import Path

RuleType = Literal["COMMON", "TRACK", "IDENTIFY", "GROUP", "PAGE", "SCREEN"]
RULE_TYPES: tuple[str, ...] = ("COMMON", "TRACK", "IDENTIFY", "GROUP", "PAGE", "SCREEN")
DRAFT_07 = "http://json-schema.org/draft-07/schema#"


class Rule(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """One rule of a plan (Segment's RuleV1): a whole-event JSON Schema for a message type."""

    type: RuleType
    key: str | None = None
    version: int = 1
    json_schema: dict[str, Any] | None = None


class TrackingPlan(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A tracking plan in Segment's Public API shape (what ``contracts import`` writes)."""

    name: str = ""
    description: str = ""
    rules: list[Rule] = []


class PlanProblem(Exception):
    """A plan that cannot be read; ``path`` is where in what was written."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class ReadRule(msgspec.Struct, frozen=True, kw_only=True):
    """A rule, and where its schema was written (so errors name the written path).

    ``lifted`` is the path prefix the reader added in front of the written schema (Typewriter's
    unwrapped TRACK schemas are wrapped back under ``properties.properties``).
    """

    rule: Rule
    written_at: Path
    lifted: Path = ()


class ReadPlan(msgspec.Struct, frozen=True, kw_only=True):
    plan: TrackingPlan
    rules: list[ReadRule]
    format: str


def read_plan(value: Any, *, name: str = "") -> ReadPlan:
    """The plan ``value`` holds, in any shape the module docstring lists. Raises ``PlanProblem``."""
    if not isinstance(value, dict):
        raise PlanProblem((), f"a tracking plan is a mapping, got {type(value).__name__}")
    prefix: Path = ()
    if isinstance(value.get("data"), dict):
        data = value["data"]
        prefix = ("data",)
        if isinstance(data.get("trackingPlan"), dict):
            value = {
                **data["trackingPlan"],
                **{k: v for k, v in data.items() if k != "trackingPlan"},
            }
        else:
            value = data
    rules = value.get("rules")
    if isinstance(rules, list):
        return _read_public_api(value, prefix, name)
    if isinstance(rules, dict):
        return _read_config_api(value, prefix, name)
    if isinstance(value.get("events"), list):
        return _read_rudder_api(value, prefix, name)
    raise PlanProblem(
        prefix,
        "not a tracking plan this version reads: expected Segment's Public API rules "
        '({"rules": [{"type": "TRACK", "key": ..., "jsonSchema": ...}]}), a Config API plan '
        '({"rules": {"events": [...]}}) or a RudderStack Data Catalog plan ({"events": [...]}); '
        "convert rudder-cli YAML with `signalsmith contracts import DIR`",
    )


def _text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _schema(value: Any, path: Path) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PlanProblem(path, f"a rule's JSON Schema is an object, got {type(value).__name__}")
    return value


def _version(value: Any, path: Path) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise PlanProblem(path, f"a rule's version is a whole number, got {value!r}")
    return int(value)


def _read_public_api(value: dict[str, Any], prefix: Path, name: str) -> ReadPlan:
    read: list[ReadRule] = []
    typewriter = False
    for index, written in enumerate(value["rules"]):
        where: Path = (*prefix, "rules", index)
        if not isinstance(written, dict):
            raise PlanProblem(where, "a rule is a mapping with type, key, version and jsonSchema")
        kind = written.get("type")
        if kind not in RULE_TYPES:
            raise PlanProblem(
                (*where, "type"),
                f"a rule's type is one of {', '.join(RULE_TYPES)}, got {kind!r}",
            )
        deprecated = written.get("deprecatedAt")
        if isinstance(deprecated, str) and deprecated and not deprecated.startswith("0001-"):
            continue  # Segment's deprecated rules no longer apply
        schema = _schema(written.get("jsonSchema"), (*where, "jsonSchema"))
        lifted: Path = ()
        if kind == "TRACK" and schema is not None and "eventMetadata" in schema:
            # Typewriter's plan.json lifts the event's properties schema up: wrap it back.
            typewriter = True
            inner = {
                k: v
                for k, v in schema.items()
                if k not in ("eventMetadata", "$id", "$schema", "id")
            }
            schema = {
                "$schema": DRAFT_07,
                "type": "object",
                "properties": {"context": {}, "traits": {}, "properties": inner},
            }
            lifted = ("properties", "properties")
        key = written.get("key")
        if kind == "TRACK" and not isinstance(key, str):
            raise PlanProblem((*where, "key"), "a TRACK rule's key is the event name it checks")
        read.append(
            ReadRule(
                rule=Rule(
                    type=kind,
                    key=key if isinstance(key, str) and key else None,
                    version=_version(written.get("version"), (*where, "version")),
                    json_schema=schema,
                ),
                written_at=(*where, "jsonSchema"),
                lifted=lifted,
            )
        )
    plan = TrackingPlan(
        name=name or _text(value.get("name")),
        description=_text(value.get("description")),
        rules=[r.rule for r in read],
    )
    return ReadPlan(
        plan=plan, rules=read, format="segment-typewriter" if typewriter else "segment-public-api"
    )


def _read_config_api(value: dict[str, Any], prefix: Path, name: str) -> ReadPlan:
    rules = value["rules"]
    read: list[ReadRule] = []
    where: Path = (*prefix, "rules")
    if rules.get("global") is not None:
        read.append(
            ReadRule(
                rule=Rule(type="COMMON", json_schema=_schema(rules["global"], (*where, "global"))),
                written_at=(*where, "global"),
            )
        )
    events = rules.get("events") or []
    if not isinstance(events, list):
        raise PlanProblem((*where, "events"), "rules.events is a list of events")
    for index, event in enumerate(events):
        at: Path = (*where, "events", index)
        if not isinstance(event, dict) or not isinstance(event.get("name"), str):
            raise PlanProblem(at, "an event of a Config API plan has a name and rules")
        read.append(
            ReadRule(
                rule=Rule(
                    type="TRACK",
                    key=event["name"],
                    version=_version(event.get("version"), (*at, "version")),
                    json_schema=_schema(event.get("rules"), (*at, "rules")),
                ),
                written_at=(*at, "rules"),
            )
        )
    # Identify and group traits: one rule object, or a list of them (samples show both).
    for field, kind in (
        ("identify_traits", "IDENTIFY"),
        ("identify", "IDENTIFY"),
        ("group_traits", "GROUP"),
        ("group", "GROUP"),
    ):
        written = rules.get(field)
        listed = written if isinstance(written, list) else [written] if written else []
        for index, item in enumerate(listed):
            at = (*where, field, index) if isinstance(written, list) else (*where, field)
            schema = item.get("rules", item) if isinstance(item, dict) else item
            read.append(
                ReadRule(
                    rule=Rule(type=kind, json_schema=_schema(schema, at)),  # type: ignore[arg-type]
                    written_at=at,
                )
            )
    display = _text(value.get("display_name")) or _text(value.get("name")).rsplit("/", 1)[-1]
    plan = TrackingPlan(name=name or display, rules=[r.rule for r in read])
    return ReadPlan(plan=plan, rules=read, format="segment-config-api")


_RUDDER_SECTIONS = {
    "properties": ("properties",),
    "traits": ("traits",),
    "context.traits": ("context", "traits"),
}


def _read_rudder_api(value: dict[str, Any], prefix: Path, name: str) -> ReadPlan:
    read: list[ReadRule] = []
    for index, event in enumerate(value["events"]):
        at: Path = (*prefix, "events", index)
        if not isinstance(event, dict):
            raise PlanProblem(at, "an event of a RudderStack plan is a mapping")
        event_type = event.get("eventType")
        if event_type not in ("track", "identify", "group", "page", "screen"):
            raise PlanProblem(
                (*at, "eventType"),
                f"eventType is one of track, identify, group, page, screen; got {event_type!r}",
            )
        event_name = _text(event.get("name"))
        if event_type == "track" and not event_name:
            raise PlanProblem((*at, "name"), "a track event of a RudderStack plan needs its name")
        if "rules" in event:
            schema = _schema(event["rules"], (*at, "rules"))
            written_at: Path = (*at, "rules")
        else:
            section = event.get("identitySection") or (
                "traits" if event_type in ("identify", "group") else "properties"
            )
            schema = rudder_section_schema(
                section,
                rudder_properties_schema(event.get("properties") or [], (*at, "properties")),
            )
            written_at = (*at, "properties")
        read.append(
            ReadRule(
                rule=Rule(
                    type=event_type.upper(),
                    key=event_name or None,
                    json_schema=schema,
                ),
                written_at=written_at,
            )
        )
    plan = TrackingPlan(
        name=name or _text(value.get("name")),
        description=_text(value.get("description")),
        rules=[r.rule for r in read],
    )
    return ReadPlan(plan=plan, rules=read, format="rudderstack-api")


def rudder_section_schema(section: str, inner: dict[str, Any]) -> dict[str, Any]:
    """A whole-event schema holding ``inner`` at RudderStack's ``identitySection``."""
    steps = _RUDDER_SECTIONS.get(section, ("properties",))
    schema: dict[str, Any] = inner
    for step in reversed(steps[1:]):
        schema = {"type": "object", "properties": {step: schema}}
    return {"$schema": DRAFT_07, "type": "object", "properties": {steps[0]: schema}}


# snake_case (rudder-cli v1) and camelCase (API, legacy propConfig) keywords, to JSON Schema's.
_CONFIG_KEYWORDS = {
    "enum": "enum",
    "min_length": "minLength",
    "max_length": "maxLength",
    "pattern": "pattern",
    "format": "format",
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusive_minimum": "exclusiveMinimum",
    "exclusive_maximum": "exclusiveMaximum",
    "multiple_of": "multipleOf",
    "min_items": "minItems",
    "max_items": "maxItems",
    "unique_items": "uniqueItems",
    "additional_properties": "additionalProperties",
}
_CONFIG_KEYWORDS |= {camel: camel for camel in list(_CONFIG_KEYWORDS.values())}


def config_keywords(config: Any, path: Path) -> dict[str, Any]:
    """A property's ``config`` / ``propConfig`` as JSON Schema keywords."""
    if not config:
        return {}
    if not isinstance(config, dict):
        raise PlanProblem(path, "a property's config is a mapping of keywords")
    keywords = {}
    for key, item in config.items():
        keyword = _CONFIG_KEYWORDS.get(key)
        if keyword is None:
            raise PlanProblem(
                (*path, key),
                f"unknown property config {key!r} (known: {', '.join(sorted(k for k in _CONFIG_KEYWORDS if '_' in k or k.islower()))})",
            )
        keywords[keyword] = item
    return keywords


def types_of(written: Any, path: Path) -> list[str]:
    """RudderStack's ``type`` (``"number, string"`` in the API) or ``types: [...]``."""
    if written is None or written == "":
        return []
    listed = [part.strip() for part in written.split(",")] if isinstance(written, str) else written
    if not isinstance(listed, list) or any(not isinstance(t, str) for t in listed):
        raise PlanProblem(path, f"a property's type is a name or a list of names, got {written!r}")
    return [t for t in listed if t]


def rudder_properties_schema(properties: Any, path: Path) -> dict[str, Any]:
    """The object schema of a RudderStack API event's ``properties`` list."""
    if not isinstance(properties, list):
        raise PlanProblem(path, "an event's properties are a list")
    schema_properties: dict[str, Any] = {}
    required: list[str] = []
    for index, prop in enumerate(properties):
        at: Path = (*path, index)
        if not isinstance(prop, dict) or not isinstance(prop.get("name"), str):
            raise PlanProblem(at, "a property has a name")
        schema: dict[str, Any] = {}
        types = types_of(prop.get("type"), (*at, "type"))
        if types:
            schema["type"] = types[0] if len(types) == 1 else types
        schema |= config_keywords(prop.get("propConfig") or prop.get("config"), (*at, "propConfig"))
        if prop.get("properties"):
            nested = rudder_properties_schema(prop["properties"], (*at, "properties"))
            schema = {**schema, **nested}
        schema_properties[prop["name"]] = schema
        if prop.get("required") in (True, "true"):
            required.append(prop["name"])
    schema = {"type": "object", "properties": schema_properties}
    if required:
        schema["required"] = required
    return schema


def encode_plan(plan: TrackingPlan) -> bytes:
    """The plan as indented JSON, as ``contracts import`` writes it."""
    return msgspec.json.format(msgspec.json.encode(plan), indent=2) + b"\n"
