"""The validate stage for one request: judge each event, apply the verdicts, record what happened.

Blocked events leave the batch (the client's answer lists them as dropped at ``validate``) and
are kept, whole, in the violations stream; allowed and omitted events go on with their
``context.protocols``; a shadow plan judges the same events and only counts. The violations
stream is written before the stage returns, so once the client has its 200 every violation and
every blocked event is in Redis.
"""

from __future__ import annotations

from signalsmith import (
    Drop,
    Event,
    Outcome,
    Source,
    StageResult,
    ViolationRecord,
    to_segment_dict,
)
from signalsmith_contracts.enforce import Enforcer, Judgement, event_name
from signalsmith_contracts.schema import render_path
from signalsmith_contracts.section import BuiltContracts
from signalsmith_contracts.store import ContractsStore, ShadowSample, ShadowTally

BLOCKED_REASON = "blocked_by_contract"


class Checked:
    """A request's batch after the contract: what goes on, what was blocked, what to record."""

    __slots__ = ("changed", "dropped", "events", "outcomes", "records", "tally")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.dropped: list[Drop] = []
        self.records: list[ViolationRecord] = []
        self.outcomes: list[Outcome] = []
        self.tally: ShadowTally | None = None
        self.changed = False


def check_batch(
    source: Source,
    events: list[Event],
    enforcer: Enforcer,
    shadow: Enforcer | None,
    *,
    observed: bool,
) -> Checked:
    """Judge ``events`` by the source's plan (and its shadow plan); nothing is written here."""
    checked = Checked()
    kept = checked.events
    if shadow is not None:
        checked.tally = ShadowTally(source.id, shadow.plan.name, shadow.plan.digest)
    for event in events:
        judgement = enforcer.judge(event)
        if shadow is not None:
            _tally(checked.tally, event, judgement, shadow)  # type: ignore[arg-type]
        if judgement is None:
            kept.append(event)
            continue
        checked.changed = True
        if judgement.violations:
            checked.records.append(enforcer.record(event, judgement))
        if judgement.action == "blocked":
            checked.dropped.append(
                Drop(event=event, reason=BLOCKED_REASON, detail=judgement.reason)
            )
            continued = event
        else:
            continued = enforcer.applied(event, judgement)
            kept.append(continued)
        if observed and judgement.violations:
            checked.outcomes.append(
                Outcome(
                    stage="validate",
                    status="violation",
                    message_id=event.message_id,
                    source_id=source.id,
                    reason=judgement.violations[0].type,
                    detail=judgement.reason,
                    event=continued,
                )
            )
    return checked


def _tally(tally: ShadowTally, event: Event, enforced: Judgement | None, shadow: Enforcer) -> None:
    name = event_name(event)
    kind = event.type
    tally.count(kind, name, "enforced", enforced.action if enforced is not None else "passed")
    judgement = shadow.judge(event)
    action = judgement.action if judgement is not None else "passed"
    field = tally.count(kind, name, "shadow", action)
    if judgement is not None and field not in tally.samples:
        tally.samples[field] = ShadowSample(
            message_id=event.message_id,
            action=action,
            reason=judgement.reason,
            omitted=[render_path(p) for p in (*judgement.omitted, *judgement.omitted_on_violation)],
            event=to_segment_dict(event),
        )


async def run_stage(
    source: Source,
    events: list[Event],
    built: BuiltContracts,
    store: ContractsStore,
    *,
    observed: bool,
) -> StageResult | None:
    enforcer = built.enforcers.get(source.id)
    if enforcer is None:
        return None
    checked = check_batch(source, events, enforcer, built.shadows.get(source.id), observed=observed)
    if checked.records or checked.tally is not None:
        await store.write(checked.records, checked.tally)
    if not checked.changed:
        return None
    return StageResult(events=checked.events, dropped=checked.dropped, outcomes=checked.outcomes)
