"""Holding a source's events to its plan, with Segment's handling options.

For each event: the rule of its type (and name, and ``context.protocols.event_version``) is
checked, then the plan's common rule; an unplanned track event is allowed or blocked; unplanned
properties or traits are allowed or omitted; violations are allowed, their offending properties
omitted, or the event blocked (Segment's order: the type's controls first, then the common
schema's). An event that passes untouched costs its checks and nothing else.

What changes an event is written into its ``context.protocols`` as Segment does:
``{sourceId, violations: [{type, field, description}], omitted: [...],
omitted_on_violation: [...]}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from signalsmith import (
    Event,
    Group,
    Identify,
    Page,
    Screen,
    Track,
    Violation,
    ViolationRecord,
    to_segment_dict,
)
from signalsmith_contracts.compiled import CompiledPlan, CompiledRule
from signalsmith_contracts.schema import Path, Problem, render_path
from signalsmith_contracts.settings import SourceContract

Action = Literal["passed", "allowed", "omitted", "blocked"]

_VIOLATION_TYPES = {
    "required": "Required",
    "type": "Invalid Type",
    "additionalProperties": "Unplanned Property",
    "unplanned_event": "Unplanned Event",
}
# The containers whose keys may be omitted; a field at the top of the event (userId) never is.
_OMITTABLE = frozenset({"properties", "traits", "context"})


def violation_of(problem: Problem) -> Violation:
    return Violation(
        type=_VIOLATION_TYPES.get(problem.rule, "Invalid Value"),
        field=render_path(problem.path),
        description=problem.message,
        rule=problem.rule,
        expected=problem.expected,
        actual=problem.actual,
    )


class Judgement(msgspec.Struct, frozen=True, kw_only=True):
    """What the plan says of one event that did not simply pass."""

    action: Action
    violations: tuple[Violation, ...] = ()
    # Paths of what to omit: unplanned properties/traits, and values that broke the plan.
    omitted: tuple[Path, ...] = ()
    omitted_on_violation: tuple[Path, ...] = ()
    rule_version: int | None = None

    @property
    def reason(self) -> str:
        if not self.violations:
            return "unplanned properties omitted"
        first = self.violations[0]
        more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
        return f"{first.type}: {first.field}: {first.description}{more}"


def _unplanned_event(event: Track) -> Judgement:
    return Judgement(
        action="blocked",
        violations=(
            Violation(
                type="Unplanned Event",
                field="event",
                description=f"event {event.event!r} is not in the tracking plan",
                rule="unplanned_event",
                expected="an event the plan lists",
                actual=msgspec.json.encode(event.event).decode(),
            ),
        ),
    )


def _omittable(path: Path) -> Path | None:
    """The key to remove for a problem at ``path``: the deepest object key above any array
    index, inside properties, traits or context; None when there is nothing to omit."""
    if len(path) < 2 or path[0] not in _OMITTABLE:
        return None
    cut = len(path)
    for position, part in enumerate(path):
        if isinstance(part, int):
            cut = position
            break
    return path[:cut] if cut >= 2 else None


class Enforcer:
    """A source's contract, compiled: its plan and handling options."""

    __slots__ = ("contract", "plan", "source_id")

    def __init__(self, source_id: str, plan: CompiledPlan, contract: SourceContract) -> None:
        self.source_id = source_id
        self.plan = plan
        self.contract = contract

    def judge(self, event: Event) -> Judgement | None:
        """What the plan says of ``event``; None when it passes untouched (the usual case)."""
        contract = self.contract
        cls = event.__class__
        rule: CompiledRule | None = self.plan.rule_for(event)
        if cls is Track:
            if rule is None and contract.track.unplanned_events == "block":
                return _unplanned_event(event)  # type: ignore[arg-type]
            violations_mode = contract.track.violations
            unplanned_mode = contract.track.unplanned_properties
            container = "properties"
        elif cls is Identify or cls is Group:
            handling = contract.identify if cls is Identify else contract.group
            violations_mode = handling.violations
            unplanned_mode = handling.unplanned_traits
            container = "traits"
        elif cls is Page or cls is Screen:
            handling = contract.page if cls is Page else contract.screen  # type: ignore[assignment]
            violations_mode = handling.violations
            unplanned_mode = handling.unplanned_properties  # type: ignore[attr-defined]
            container = "properties"
        else:
            violations_mode = "allow"
            unplanned_mode = "allow"
            container = ""

        problems = rule.check(event) if rule is not None and rule.check is not None else ()
        common_rule = self.plan.common.pick(event) if self.plan.common is not None else None
        common = (
            common_rule.check(event)
            if common_rule is not None and common_rule.check is not None
            else ()
        )
        unplanned: tuple[Path, ...] = ()
        if unplanned_mode == "omit" and rule is not None and rule.planned is not None:
            values: dict[str, Any] = getattr(event, container)
            planned = rule.planned
            if not planned.issuperset(values):  # one C call when everything is planned
                unplanned = tuple((container, key) for key in values if key not in planned)
        if not problems and not common and not unplanned:
            return None

        violations = tuple(violation_of(problem) for problem in (*problems, *common))
        version = rule.version if rule is not None else None
        if (problems and violations_mode == "block") or (
            common and contract.common.violations == "block"
        ):
            return Judgement(action="blocked", violations=violations, rule_version=version)
        on_violation: list[Path] = []
        if violations_mode == "omit":
            on_violation += _omit_paths(problems)
        if contract.common.violations == "omit":
            on_violation += _omit_paths(common)
        omitted_on_violation = tuple(dict.fromkeys(on_violation))
        omitted = tuple(path for path in unplanned if path not in omitted_on_violation)
        return Judgement(
            action="omitted" if omitted or omitted_on_violation else "allowed",
            violations=violations,
            omitted=omitted,
            omitted_on_violation=omitted_on_violation,
            rule_version=version,
        )

    def applied(self, event: Event, judgement: Judgement) -> Event:
        """``event`` as the judgement leaves it: paths omitted, ``context.protocols`` written."""
        changes: dict[str, Any] = {}
        for path in (*judgement.omitted, *judgement.omitted_on_violation):
            container = path[0]
            current = changes.get(container, getattr(event, container))
            changes[container] = _without(current, path[1:])
        context = changes.get("context", event.context)
        protocols = context.get("protocols")
        stamped: dict[str, Any] = dict(protocols) if isinstance(protocols, dict) else {}
        stamped["sourceId"] = self.source_id
        if judgement.violations:
            stamped["violations"] = [
                {"type": v.type, "field": v.field, "description": v.description}
                for v in judgement.violations
            ]
        if judgement.omitted:
            stamped["omitted"] = [render_path(path) for path in judgement.omitted]
        if judgement.omitted_on_violation:
            stamped["omitted_on_violation"] = [
                render_path(path) for path in judgement.omitted_on_violation
            ]
        changes["context"] = {**context, "protocols": stamped}
        return msgspec.structs.replace(event, **changes)

    def record(self, event: Event, judgement: Judgement) -> ViolationRecord:
        """The violations stream's record of ``event`` (as it arrived) and what was done."""
        return ViolationRecord(
            source_id=self.source_id,
            message_id=event.message_id,
            event_type=event.type,
            event_name=event_name(event),
            received_at=event.received_at,
            plan=self.plan.name,
            event_version=judgement.rule_version,
            handling=judgement.action,  # type: ignore[arg-type]
            violations=judgement.violations,
            event=msgspec.json.encode(to_segment_dict(event)),
        )


def event_name(event: Event) -> str:
    """Track: the event; page/screen: the name; others: empty (how violations are grouped)."""
    if isinstance(event, Track):
        return event.event
    if isinstance(event, Page | Screen):
        return event.name or ""
    return ""


def _omit_paths(problems: Iterable[Problem]) -> list[Path]:
    paths = []
    for problem in problems:
        if problem.rule == "required":
            continue  # nothing there to omit
        path = _omittable(problem.path)
        if path is not None:
            paths.append(path)
    return paths


def _without(values: Any, path: Path) -> Any:
    """A copy of ``values`` without the key at ``path`` (copying only the objects on the way)."""
    if not isinstance(values, dict) or not path:
        return values
    key, rest = path[0], path[1:]
    if key not in values:
        return values
    copy = dict(values)
    if rest:
        copy[key] = _without(values[key], rest)
    else:
        del copy[key]
    return copy
