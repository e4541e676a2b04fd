"""Plans: how many events a second a write key may send, and how large a burst it may send at once.

Limits are counted in events (the messages of a request), not in requests. ``free`` and ``pro``
have fixed limits; ``enterprise`` keys carry their own rate (10,000 events/s or more) and burst.
"""

from __future__ import annotations

import msgspec


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """A named plan; ``rate`` and ``burst`` are None when every key sets its own."""

    name: str
    # Sustained events per second.
    rate: int | None
    # Events that may arrive at once after a quiet period (the token bucket's size).
    burst: int | None
    # Least rate a key on this plan may set (enterprise only).
    min_rate: int = 1


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What one key is allowed: its plan's name, rate and burst."""

    plan: str
    rate: int
    burst: int


FREE = Plan(name="free", rate=100, burst=500)
PRO = Plan(name="pro", rate=1_000, burst=5_000)
ENTERPRISE = Plan(name="enterprise", rate=None, burst=None, min_rate=10_000)
PLANS: dict[str, Plan] = {plan.name: plan for plan in (FREE, PRO, ENTERPRISE)}
DEFAULT_PLAN = FREE.name


class InvalidPlan(ValueError):
    """A plan name, rate or burst that cannot be used; the message says what to pass instead."""


def limits_for(plan_name: str, rate: int | None = None, burst: int | None = None) -> Limits:
    """The limits of ``plan_name``; ``rate`` and ``burst`` are required for enterprise only."""
    plan = PLANS.get(plan_name)
    if plan is None:
        raise InvalidPlan(f"unknown plan {plan_name!r}: use one of {', '.join(PLANS)}")
    if plan.rate is not None and plan.burst is not None:
        if rate is not None or burst is not None:
            raise InvalidPlan(
                f"the {plan.name} plan has fixed limits ({plan.rate} events/s, bursts of "
                f"{plan.burst}); to set a key's own rate and burst use the enterprise plan"
            )
        return Limits(plan=plan.name, rate=plan.rate, burst=plan.burst)
    if rate is None or burst is None:
        raise InvalidPlan(
            f"the {plan.name} plan needs a rate (events/s, at least {plan.min_rate}) and a "
            f"burst (events) for each key: pass both"
        )
    if rate < plan.min_rate:
        raise InvalidPlan(
            f"the {plan.name} plan's rate is at least {plan.min_rate} events/s, not {rate}; "
            f"for less, use the pro or free plan"
        )
    if burst < 1:
        raise InvalidPlan(f"a burst is at least 1 event, not {burst}")
    return Limits(plan=plan.name, rate=rate, burst=burst)
