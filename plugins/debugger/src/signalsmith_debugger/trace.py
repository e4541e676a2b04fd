"""A messageId's trace: its records from every slice, in order, and where it went and why."""

from __future__ import annotations

from datetime import UTC, datetime

from signalsmith_debugger.config import DebuggerConfig
from signalsmith_debugger.records import Record, SinkFate, Trace, view

# The collector's stages, in the order a request passes them.
COLLECTOR_STAGES = (
    "parse",
    "authenticate",
    "admit",
    "normalise",
    "validate",
    "transform",
    "consent",
    "buffer",
)


def build_trace(
    message_id: str,
    records: list[Record],
    config: DebuggerConfig,
    kept_since: float | None,
) -> Trace:
    """The trace of ``message_id`` from its records (in time order, at least one)."""
    records = received_once(records)
    first = next((record for record in records if record.type is not None), records[0])
    sinks = sink_fates(records)
    return Trace(
        message_id=message_id,
        source_ids=sorted({record.source_id for record in records}),
        type=first.type,
        event=first.event,
        user_id=first.user_id,
        anonymous_id=first.anonymous_id,
        summary=summarise(records, sinks),
        sinks=sinks,
        steps=[view(record) for record in records],
        retention_seconds=config.trace_seconds,
        kept_since=_moment(kept_since),
    )


def received_once(records: list[Record]) -> list[Record]:
    """The records with the event shown as received once.

    The worker records every buffered event as accepted (the event as buffered) and buffered.
    When a stage replaced the event, the collector reported it as received too: that record
    stays, and the worker's event moves to its buffered record (the event after the stages).
    """
    observed = any(r.stage == "normalise" and r.status == "accepted" and not r.via for r in records)
    if not observed:
        return records
    derived = [r for r in records if r.stage == "normalise" and r.status == "accepted" and r.via]
    if not derived:
        return records
    kept = [r for r in records if not (r.via and r.stage == "normalise" and r.status == "accepted")]
    buffered = next((r for r in kept if r.via and r.stage == "buffer" and r.payload is None), None)
    if buffered is not None:
        shown = derived[-1]
        buffered.payload = shown.payload
        buffered.payload_size = shown.payload_size
        buffered.payload_truncated = shown.payload_truncated
    return kept


def sink_fates(records: list[Record]) -> list[SinkFate]:
    """Each sink's latest word on the event, with its failed attempts counted."""
    fates: dict[str, SinkFate] = {}
    for record in records:
        if record.stage != "deliver" or record.sink is None:
            continue
        fate = fates.get(record.sink)
        if fate is None:
            fate = fates[record.sink] = SinkFate(
                sink=record.sink,
                kind=record.sink_kind or "destination",
                status="retrying",
                at=_moment(record.at),  # type: ignore[arg-type]
            )
        fate.at = _moment(record.at)  # type: ignore[assignment]
        if record.status == "retried":
            fate.failed_attempts += 1
            fate.status = "retrying"
            fate.reason = record.reason
        elif record.status in ("delivered", "dead_lettered", "skipped"):
            fate.status = record.status  # type: ignore[assignment]
            fate.reason = record.reason if record.status != "delivered" else None
    return sorted(fates.values(), key=lambda fate: (fate.kind != "warehouse", fate.sink))


def summarise(records: list[Record], sinks: list[SinkFate]) -> str:
    """One sentence: what became of the event, and why."""
    collected = [record for record in records if record.stage != "deliver"]
    buffered = any(r.stage == "buffer" and r.status == "buffered" for r in collected)
    violations = [r for r in collected if r.status == "violation"]
    parts: list[str] = []
    if buffered:
        parts.append("accepted and buffered")
    else:
        ending = next(
            (r for r in reversed(collected) if r.status in ("rejected", "dropped", "duplicate")),
            None,
        )
        if ending is None:
            parts.append("received; not buffered yet" if collected else "seen only by the worker")
        elif ending.status == "duplicate":
            parts.append("a duplicate of a messageId buffered before: not delivered again")
        else:
            verb = "rejected" if ending.status == "rejected" else "dropped"
            why = f": {ending.reason}" if ending.reason else ""
            detail = f" ({ending.detail})" if ending.detail else ""
            parts.append(f"{verb} at {ending.stage}{why}{detail}")
    if violations:
        reasons = sorted({v.reason or "violation" for v in violations})
        parts.append(f"contract violations: {', '.join(reasons)}")
    refused = [
        r for r in collected if r.status == "rejected" and buffered and r.stage in COLLECTOR_STAGES
    ]
    if refused:
        # A client that retried: the attempts refused besides the one buffered.
        parts.append(f"also refused {len(refused)} time(s) ({refused[0].reason})")
    duplicates = sum(1 for r in collected if r.status == "duplicate")
    if duplicates and buffered:
        parts.append(f"sent again {duplicates} time(s): not buffered again")
    for fate in sinks:
        name = f"{fate.kind} {fate.sink!r}"
        if fate.status == "delivered":
            retried = (
                f" after {fate.failed_attempts} failed attempt(s)" if fate.failed_attempts else ""
            )
            parts.append(
                f"{'written to' if fate.kind == 'warehouse' else 'delivered to'} {name}{retried}"
            )
        elif fate.status == "retrying":
            parts.append(
                f"{name}: {fate.failed_attempts} failed attempt(s), retrying ({fate.reason})"
            )
        elif fate.status == "dead_lettered":
            parts.append(f"dead-lettered by {name}: {fate.reason}")
        else:
            parts.append(f"not for {name}: {fate.reason}")
    if buffered and not sinks:
        parts.append("no sink has reported it yet")
    return "; ".join(parts)


def _moment(at: float | None) -> datetime | None:
    return None if at is None else datetime.fromtimestamp(at, UTC)
