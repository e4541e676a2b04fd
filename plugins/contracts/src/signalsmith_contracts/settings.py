"""What the workspace says about contracts: the ``contracts:`` section (plans by name) and each
source's ``contract`` field (its plan, a shadow plan, and Segment's handling options).

Handling follows Segment's Schema Configuration (`shared/reference/segment-spec.md` section 4),
with its names, and allows everything unless told otherwise, as Segment does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from signalsmith import Secret, Url

PlanName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        extra={"expected": "a plan name of 1-64 letters, digits, '.', '_' or '-'"},
    ),
]
AllowOrBlock = Literal["allow", "block"]
AllowOrOmit = Literal["allow", "omit"]
ViolationHandling = Literal["allow", "omit", "block"]

# `contracts:` maps plan names to plans, each in any shape `plans.read_plan` reads (checked and
# compiled by the plugin's `check`, which reports each problem at its path).
ContractsSection = dict[PlanName, dict[str, Any]]


class TrackHandling(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Track events: unplanned events, unplanned properties, JSON Schema violations."""

    unplanned_events: AllowOrBlock = "allow"
    unplanned_properties: AllowOrOmit = "allow"
    violations: ViolationHandling = "allow"


class TraitsHandling(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Identify and group calls: unplanned traits, JSON Schema violations."""

    unplanned_traits: AllowOrOmit = "allow"
    violations: ViolationHandling = "allow"


class PropertiesHandling(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Page and screen calls: unplanned properties, JSON Schema violations."""

    unplanned_properties: AllowOrOmit = "allow"
    violations: ViolationHandling = "allow"


class CommonHandling(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The common schema (every event), applied after the type's own rule."""

    violations: ViolationHandling = "allow"


class Forwarding(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where ``Violation Generated`` events go: a Segment-compatible HTTP API (this SignalSmith's
    own collector, or Segment's) and the write key of the source that receives them."""

    url: Url
    write_key: Secret


class SourceContract(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``sources.<name>.contract``: the plan a source's events are held to, and how."""

    plan: PlanName
    # A plan run beside the enforced one on the same events, enforcing nothing: `signalsmith
    # contracts shadow-report` says what it would have done.
    shadow: PlanName | None = None
    track: TrackHandling = TrackHandling()
    identify: TraitsHandling = TraitsHandling()
    group: TraitsHandling = TraitsHandling()
    page: PropertiesHandling = PropertiesHandling()
    screen: PropertiesHandling = PropertiesHandling()
    common: CommonHandling = CommonHandling()
    forward_violations: Forwarding | None = None
