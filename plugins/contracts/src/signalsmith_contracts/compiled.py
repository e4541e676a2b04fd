"""A tracking plan compiled for checking events: each rule's whole-event schema as one function.

Rules validate the whole event as Segment sends it (``properties.properties.<name>`` for a track
event's properties). Events are msgspec Structs, and turning each into a dict would cost more
than checking it, so a rule whose top level only lists fields (``type``, ``properties``,
``required``: every export seen) reads those fields off the event directly; any other rule
checks the event's Segment JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import jsonschema
import msgspec

from signalsmith import Event, Group, Identify, Page, Screen, Track, to_segment_dict
from signalsmith_contracts.plans import ReadPlan, ReadRule, Rule
from signalsmith_contracts.schema import Path, Problem, SchemaError, Validator, render_path

_ABSENT: Any = object()
_ROOT_KEYWORDS = frozenset({"type", "properties", "required"})
_ROOT_ANNOTATIONS = frozenset(
    {"$schema", "$id", "id", "title", "description", "labels", "$comment", "definitions", "$defs"}
)
# Event fields by their wire name (what a schema names), for the fields that are not the same
# in snake_case; anything else is read from the event's extra top-level keys.
_FIELDS = {
    "messageId": "message_id",
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "groupId": "group_id",
    "previousId": "previous_id",
    "receivedAt": "received_at",
    "sentAt": "sent_at",
    "originalTimestamp": "original_timestamp",
    "projectId": "project_id",
}
_STRUCT_FIELDS = frozenset(
    {"context", "integrations", "properties", "traits", "event", "name", "category", "timestamp"}
)


def _reader(wire: str) -> Callable[[Event], Any]:
    """How to read the field a schema calls ``wire`` off an event (``_ABSENT`` when missing)."""
    if wire == "type":
        return lambda event: event.__struct_config__.tag
    attribute = _FIELDS.get(wire, wire if wire in _STRUCT_FIELDS else None)
    if attribute is None:
        return lambda event: event.extra.get(wire, _ABSENT)

    def read(event: Event) -> Any:
        value = getattr(event, attribute, _ABSENT)
        if value is None:
            return _ABSENT  # an unset optional field is not sent
        if value.__class__ is datetime:
            return value.isoformat().replace("+00:00", "Z")
        return value

    return read


EventCheck = Callable[[Event], list[Problem]]


def compile_event_schema(schema: dict[str, Any] | None, where: Path = ()) -> EventCheck | None:
    """A whole-event schema as a function of an event; None when it accepts every event."""
    check_metaschema(schema, where)
    if not schema:
        return None
    keywords = set(schema) - _ROOT_ANNOTATIONS
    root_type = schema.get("type", "object")
    if keywords <= _ROOT_KEYWORDS and root_type in ("object", ["object"]):
        return _field_checks(schema, where)
    full = Validator(schema, where)

    def check_json(event: Event) -> list[Problem]:
        body = event_json(event)
        return [] if full.is_valid(body) else full.problems(body, ())

    return check_json


def _field_checks(schema: dict[str, Any], where: Path) -> EventCheck | None:
    properties = schema.get("properties") or {}
    if not isinstance(properties, dict):
        raise SchemaError((*where, "properties"), "properties must be an object of schemas")
    fields: list[tuple[str, Validator, Callable[[Event], Any]]] = []
    for wire, sub in properties.items():
        if sub is True or sub == {}:
            continue  # accepts anything: no call at all
        fields.append((wire, Validator(sub, (*where, "properties", wire)), _reader(wire)))
    required_written = schema.get("required") or []
    if not isinstance(required_written, list) or any(
        not isinstance(name, str) for name in required_written
    ):
        raise SchemaError((*where, "required"), "required must be a list of field names")
    # Properties, traits and context are always there (an empty object is not sent, but is).
    required = tuple(
        (wire, _reader(wire))
        for wire in dict.fromkeys(required_written)
        if wire not in ("properties", "traits", "context")
    )
    if not fields and not required:
        return None
    listed = tuple(fields)

    def check(event: Event) -> list[Problem]:
        out: list[Problem] = []
        for wire, validator, read in listed:
            value = read(event)
            if value is not _ABSENT and not validator.is_valid(value):
                out += validator.problems(value, (wire,))
        for wire, read in required:
            if read(event) is _ABSENT:
                out.append(
                    Problem((wire,), "required", "present", "missing", f"{wire} is required")
                )
        return out

    return check


def event_json(event: Event) -> dict[str, Any]:
    """The event as Segment JSON, with the objects every event has present even when empty."""
    body = to_segment_dict(event)
    body.setdefault("context", {})
    if isinstance(event, Track | Page | Screen):
        body.setdefault("properties", {})
    if isinstance(event, Identify | Group):
        body.setdefault("traits", {})
    return body


def check_metaschema(schema: Any, where: Path) -> None:
    """Refuse a schema that is not valid JSON Schema (of the draft it names; draft-07 if none)."""
    if schema is None:
        return
    if not isinstance(schema, dict):
        raise SchemaError(where, f"a rule's JSON Schema is an object, got {type(schema).__name__}")
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    error = jsonschema.exceptions.best_match(validator(validator.META_SCHEMA).iter_errors(schema))
    if error is not None:
        raise SchemaError(
            (*where, *error.absolute_path),
            f"not valid JSON Schema: {error.message}",
        )


# --- the plan ------------------------------------------------------------------------------------


class CompiledRule:
    """One rule, compiled: ``check(event)`` lists its problems; ``planned`` names the properties
    (or traits) it plans, None when it does not govern them."""

    __slots__ = ("check", "key", "planned", "type", "version")

    def __init__(
        self, rule: Rule, check: EventCheck | None, planned: frozenset[str] | None
    ) -> None:
        self.type = rule.type
        self.key = rule.key
        self.version = rule.version
        self.check = check
        self.planned = planned


def _planned(schema: dict[str, Any] | None, container: str) -> frozenset[str] | None:
    """The names planned under ``properties.<container>.properties``; None if not described."""
    if not schema:
        return None
    described = (schema.get("properties") or {}).get(container)
    if not isinstance(described, dict):
        return frozenset() if container == "properties" else None
    return frozenset((described.get("properties") or {}).keys())


class Versions:
    """A rule's versions; ``pick(event)`` is the one ``context.protocols.event_version`` names,
    or the oldest when it names none (or one the plan does not have), as Segment does."""

    __slots__ = ("by_version", "oldest")

    def __init__(self) -> None:
        self.by_version: dict[int, CompiledRule] = {}
        self.oldest: CompiledRule | None = None

    def add(self, rule: CompiledRule) -> None:
        self.by_version[rule.version] = rule
        if self.oldest is None or rule.version < self.oldest.version:
            self.oldest = rule

    def pick(self, event: Event) -> CompiledRule:
        if len(self.by_version) > 1:
            protocols = event.context.get("protocols")
            if protocols.__class__ is dict:
                version = protocols.get("event_version")
                if version.__class__ is int:
                    found = self.by_version.get(version)
                    if found is not None:
                        return found
        return self.oldest  # type: ignore[return-value]


class PlanError(Exception):
    """A plan that cannot be compiled; ``path`` is where in what was written."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class CompiledPlan:
    """Every rule of a plan compiled, found by message type (and event name)."""

    __slots__ = ("common", "digest", "group", "identify", "name", "page", "screen", "track")

    def __init__(self, name: str, digest: str) -> None:
        self.name = name
        self.digest = digest
        self.track: dict[str, Versions] = {}
        self.page: dict[str, Versions] = {}
        self.screen: dict[str, Versions] = {}
        self.identify: Versions | None = None
        self.group: Versions | None = None
        self.common: Versions | None = None

    def rule_for(self, event: Event) -> CompiledRule | None:
        """The rule that checks ``event`` (None: the plan has none for it)."""
        cls = event.__class__
        if cls is Track:
            versions = self.track.get(event.event)  # type: ignore[union-attr]
        elif cls is Identify:
            versions = self.identify
        elif cls is Group:
            versions = self.group
        elif cls is Page or cls is Screen:
            named = self.page if cls is Page else self.screen
            versions = named.get(event.name or "") or named.get("")  # type: ignore[union-attr]
        else:
            versions = None
        return versions.pick(event) if versions is not None else None

    @property
    def event_names(self) -> list[str]:
        return sorted(self.track)


def compile_plan(name: str, read: ReadPlan, digest: str) -> CompiledPlan:
    """``read`` compiled; raises ``PlanError`` naming the rule and the path of the first problem."""
    plan = CompiledPlan(name, digest)
    seen: set[tuple[str, str | None, int]] = set()
    for read_rule in read.rules:
        rule = read_rule.rule
        identity = (rule.type, rule.key, rule.version)
        if identity in seen:
            raise PlanError(
                read_rule.written_at[:-1],
                f"{_describe(rule)} is in the plan twice; give each version its own number",
            )
        seen.add(identity)
        try:
            check = compile_event_schema(rule.json_schema)
        except SchemaError as error:
            raise PlanError(
                _written(read_rule, error.path), f"{_describe(rule)}: {error.message}"
            ) from None
        container = "traits" if rule.type in ("IDENTIFY", "GROUP") else "properties"
        compiled = CompiledRule(rule, check, _planned(rule.json_schema, container))
        if rule.type == "TRACK":
            plan.track.setdefault(rule.key or "", Versions()).add(compiled)
        elif rule.type in ("PAGE", "SCREEN"):
            named = plan.page if rule.type == "PAGE" else plan.screen
            named.setdefault(rule.key or "", Versions()).add(compiled)
        else:
            attribute = rule.type.lower()
            versions = getattr(plan, attribute) or Versions()
            versions.add(compiled)
            setattr(plan, attribute, versions)
    return plan


def _written(read_rule: ReadRule, path: Path) -> Path:
    """A path inside a rule's schema as a path inside what was written."""
    lifted = read_rule.lifted
    if lifted and path[: len(lifted)] == lifted:
        path = path[len(lifted) :]
    return (*read_rule.written_at, *path)


def _describe(rule: Rule) -> str:
    if rule.type == "TRACK":
        return f"event {rule.key!r} version {rule.version}"
    if rule.key:
        return f"{rule.type.lower()} {rule.key!r} rule version {rule.version}"
    return f"{rule.type.lower()} rule version {rule.version}"


def plan_digest(read: ReadPlan) -> str:
    """A short fingerprint of a plan's rules: shadow counts start afresh when it changes."""
    import hashlib

    encoded = msgspec.json.encode(read.plan.rules, order="deterministic")
    return hashlib.sha256(encoded).hexdigest()[:12]


__all__ = [
    "CompiledPlan",
    "CompiledRule",
    "PlanError",
    "compile_plan",
    "event_json",
    "plan_digest",
    "render_path",
]
