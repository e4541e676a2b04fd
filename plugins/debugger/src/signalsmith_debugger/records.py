"""What the debugger stores and serves.

An ``Entry`` is what the recorder stores: one observed list of outcomes (a request's stage, a
sink's settled batch), compact and encoded once. A ``Record`` is one outcome of it (what one
stage did to one event, or to a message that never became one), as the trace and the live feed
read them; the API and the page get ``RecordView`` (JSON, named fields) and ``Trace``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from signalsmith_debugger.payloads import message_summary

# The pseudo-source of requests refused before a write key named one (401s, unreadable
# bodies): only the admin token sees it.
NO_SOURCE = "-"

# ``Record.via`` of the records the worker makes from the buffer's stream.
VIA_STREAM = "stream"

# What the live filter calls each outcome status; `failed` is a delivery that did not succeed.
STATUS_FILTERS = {
    "rejected": frozenset({"rejected"}),
    "violated": frozenset({"violation"}),
    "dropped": frozenset({"dropped"}),
    "failed": frozenset({"retried", "dead_lettered"}),
}
StatusFilter = Literal["rejected", "violated", "dropped", "failed"]

# Counted for the live chart: events received, contract violations, failures.
FAILURE_STATUSES = frozenset({"rejected", "retried", "dead_lettered"})


class Record(msgspec.Struct, kw_only=True):
    """One outcome, as an entry holds it."""

    # Unix time (seconds) the outcome was observed.
    at: float
    stage: str
    status: str
    message_id: str | None
    source_id: str
    # The event, summarised for filters and lists (client-supplied strings, shortened).
    type: str | None = None
    event: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    sink: str | None = None
    sink_kind: str | None = None
    # The process that observed it: collector, worker or embedded.
    role: str = ""
    # The event (or the raw message), at the stages where it was first seen or changed; shortened
    # past the payload cap (then ``payload_size`` is its full size as JSON).
    payload: Any = None
    payload_size: int = 0
    payload_truncated: bool = False
    # "stream": recorded by the worker from the buffer (every buffered event); "": observed.
    via: str = ""


class Entry(msgspec.Struct, array_like=True, omit_defaults=True, kw_only=True):
    """One observed list of outcomes of one source (a request's stage, a sink's settled batch)
    as stored: in the live stream, and in the trace slices, which index it by messageId.

    Stored whole, once, in msgpack: building one costs a few list comprehensions and one
    encoding, whatever the number of events. ``expand`` makes its records.
    """

    at: float
    stage: str
    source_id: str
    role: str
    message_ids: list[str | None]
    # The status of every outcome, or (``statuses``) of each.
    status: str = ""
    statuses: list[str] | None = None
    reasons: list[str | None] | None = None
    details: list[str | None] | None = None
    sink: str | None = None
    sink_kind: str | None = None
    # What each outcome showed of its event, where this process had not kept it already (None
    # elsewhere): the event, or for a message refused before it became one, what it held (write
    # keys hidden, shortened past the cap).
    payloads: list[Any] | None = None
    # The full size as JSON of each payload that was shortened (0: not shortened).
    sizes: list[int] | None = None
    # The summary of each outcome that has no event (a refused message), as (type, name,
    # userId, anonymousId); an event's comes from the event.
    summaries: list[tuple[str | None, str | None, str | None, str | None] | None] | None = None
    # "stream": recorded by the worker from the buffer's stream (``Recorder.take_buffered``).
    via: str = ""

    def expand(self, position: int) -> Record:
        """The record of the outcome at ``position``."""
        payload = self.payloads[position] if self.payloads is not None else None
        summary = self.summaries[position] if self.summaries is not None else None
        if summary is None and isinstance(payload, dict):
            summary = message_summary(payload)[0]
        size = self.sizes[position] if self.sizes is not None else 0
        return Record(
            at=self.at,
            stage=self.stage,
            status=self.statuses[position] if self.statuses is not None else self.status,
            message_id=self.message_ids[position],
            source_id=self.source_id,
            type=summary[0] if summary else None,
            event=summary[1] if summary else None,
            user_id=summary[2] if summary else None,
            anonymous_id=summary[3] if summary else None,
            reason=self.reasons[position] if self.reasons is not None else None,
            detail=self.details[position] if self.details is not None else None,
            sink=self.sink,
            sink_kind=self.sink_kind,
            role=self.role,
            payload=payload,
            payload_size=size,
            payload_truncated=size > 0,
            via=self.via,
        )

    def records(self) -> list[Record]:
        return [self.expand(position) for position in range(len(self.message_ids))]


entry_encoder = msgspec.msgpack.Encoder()
entry_decoder = msgspec.msgpack.Decoder(Entry)


class RecordView(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """A record as the API and the page show it."""

    at: datetime
    stage: str
    status: str
    message_id: str | None
    source_id: str
    type: str | None = None
    event: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    sink: str | None = None
    sink_kind: str | None = None
    role: str = ""
    payload: Any = None
    payload_size: int = 0
    payload_truncated: bool = False


def view(record: Record, *, with_payload: bool = True) -> RecordView:
    return RecordView(
        at=datetime.fromtimestamp(record.at, UTC),
        stage=record.stage,
        status=record.status,
        message_id=record.message_id,
        source_id=record.source_id,
        type=record.type,
        event=record.event,
        user_id=record.user_id,
        anonymous_id=record.anonymous_id,
        reason=record.reason,
        detail=record.detail,
        sink=record.sink,
        sink_kind=record.sink_kind,
        role=record.role,
        payload=record.payload if with_payload else None,
        payload_size=record.payload_size if with_payload else 0,
        payload_truncated=record.payload_truncated if with_payload else False,
    )


class SinkFate(msgspec.Struct, kw_only=True, rename="camel"):
    """Where one sink stands with the event: its last word, and how many attempts failed."""

    sink: str
    kind: str
    status: Literal["delivered", "retrying", "dead_lettered", "skipped"]
    failed_attempts: int = 0
    reason: str | None = None
    at: datetime


class Trace(msgspec.Struct, kw_only=True, rename="camel"):
    """One messageId's whole path, in time order, and the answer to "where did it go?"."""

    message_id: str
    source_ids: list[str]
    type: str | None
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    # One sentence: buffered and delivered, rejected and why, dropped and by what.
    summary: str
    sinks: list[SinkFate]
    steps: list[RecordView]
    # How long traces are kept, and the oldest moment a trace is still kept from (the memory cap
    # may have evicted older ones).
    retention_seconds: int
    kept_since: datetime | None = None
