"""The ``segment`` destination type: events forwarded in batches to any Segment-compatible HTTP
API (`POST <url>` with ``{"batch": [...], "sentAt": ...}`` and the write key in Basic auth):
Segment itself, RudderStack's data plane, or another SignalSmith.

Batches stay within the smallest limits of the three (`shared/reference/destinations.md`
section 6.2): 32 KB per event (a larger event is dead-lettered, never sent), 500 KB and 2,500
events per request. Every event keeps its ``messageId``, which each of them deduplicates on, so
a retry or a replay is never counted twice there; the fields a receiver sets itself
(``receivedAt``, ``sentAt``, ``originalTimestamp``, ``projectId``, ``writeKey``) are not sent,
and the batch's ``sentAt`` is the moment of sending, so the receiver keeps each event's time.

Answers are classified the core's way (``signalsmith.HttpDestination``): 2xx delivered (the
events another SignalSmith lists as ``rejected`` in its 200 are dead-lettered, the others
delivered); 408, 423, 429 and 5xx but 501 retried, ``Retry-After`` honoured; a 400 or 413 to a
batch is split until the refused events are found (Segment answers 400 for a whole batch);
other 4xx dead-lettered with the answer's body.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from signalsmith import (
    UNDEFINED,
    DeliveryReport,
    DestinationInstances,
    DestinationType,
    Event,
    HttpAnswer,
    HttpDestination,
    HttpSettings,
    Prepared,
    RequestPlan,
    Runtime,
    Secret,
    Settlement,
    Sink,
    Url,
    __version__,
    chunked,
    hookimpl,
    to_segment_dict,
)

PLUGIN = "dest-segment"
TYPE = "segment"
USER_AGENT = f"SignalSmith/{__version__} (segment forward)"
MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
SEGMENT_US = "https://api.segment.io/v1/batch"


class Limits(msgspec.Struct, frozen=True):
    event_bytes: int
    request_bytes: int
    request_events: int


# The smallest of Segment's, RudderStack's and SignalSmith's limits (destinations.md 6.2).
LIMITS = Limits(event_bytes=32 * 1024, request_bytes=500 * 1000, request_events=2500)
# What `{"batch":[` ... `],"sentAt":"2026-12-01T10:00:00.000Z"}` adds to the events.
ENVELOPE_BYTES = 64
# Fields the receiver sets itself, not sent.
RECEIVER_FIELDS = ("receivedAt", "sentAt", "originalTimestamp", "projectId", "writeKey")


class SegmentSettings(HttpSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A Segment-compatible forward's settings (README.md lists them with their defaults)."""

    write_key: Secret
    # The receiver's batch endpoint: Segment EU is https://events.eu1.segmentapis.com/v1/batch,
    # RudderStack <data plane>/v1/batch, SignalSmith <collector>/v1/batch.
    url: Url = SEGMENT_US
    # Flush below the limits, as Segment's own clients do (python flushes at 475,000 bytes).
    max_events_per_request: Annotated[int, msgspec.Meta(ge=1, le=LIMITS.request_events)] = 500
    max_bytes_per_request: Annotated[
        int, msgspec.Meta(ge=LIMITS.event_bytes + ENVELOPE_BYTES, le=LIMITS.request_bytes)
    ] = 450_000
    # Content-Encoding: gzip (Segment, RudderStack and SignalSmith accept it; limits apply to
    # the uncompressed body).
    gzip: bool = False


# Every message type is forwarded whole, as Segment spells it.
DEFAULT_MAPPINGS: dict[str, Any] = {kind: {"@path": "$."} for kind in MESSAGE_TYPES}


def forwarded(destination: Sink, event: Event) -> dict[str, Any] | None:
    """The event as the receiver gets it: its mapping's object, with ``type`` and
    ``messageId`` always there, without the fields the receiver sets (None: no object)."""
    mapping = destination.mapping
    payload: Any = to_segment_dict(event) if mapping is None else mapping.payload(event)
    if payload is UNDEFINED or not isinstance(payload, dict):
        return None
    payload.setdefault("type", event.type)
    payload.setdefault("messageId", event.message_id)
    for field in RECEIVER_FIELDS:
        payload.pop(field, None)
    return payload


def prepare(destination: Sink, events: list[Event], settlement: Settlement) -> list[Prepared]:
    prepared = []
    for event in events:
        try:
            payload = forwarded(destination, event)
        except Exception as error:  # a mapping never raises for missing fields; this is a bug
            settlement.refuse([event], f"the mapping failed: {type(error).__name__}: {error}")
            continue
        if payload is None:
            settlement.refuse(
                [event], "the mapping did not make an object (a Segment message) of this event"
            )
            continue
        body = msgspec.json.encode(payload)
        if len(body) > LIMITS.event_bytes:
            settlement.refuse(
                [event],
                f"the event is {len(body)} bytes; Segment-compatible APIs take at most "
                f"{LIMITS.event_bytes} bytes per event",
            )
            continue
        prepared.append(Prepared(event, body))
    return prepared


def request_planner(settings: SegmentSettings) -> Callable[[list[Prepared]], RequestPlan]:
    credentials = base64.b64encode(f"{settings.write_key}:".encode()).decode()
    headers = {"content-type": "application/json", "authorization": f"Basic {credentials}"}
    if settings.gzip:
        headers["content-encoding"] = "gzip"

    def plan(chunk: list[Prepared]) -> RequestPlan:
        sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = (
            b'{"batch":['
            + b",".join(item.body for item in chunk)
            + b'],"sentAt":"'
            + sent_at.encode()
            + b'"}'
        )
        if settings.gzip:
            body = gzip.compress(body, compresslevel=5)
        return RequestPlan("POST", settings.url, body, headers)

    return plan


def receiver_rejections(answer: HttpAnswer, chunk: list[Prepared]) -> dict[int, tuple[int, str]]:
    """The events a 200 refused one by one: SignalSmith lists them as ``rejected`` (``index``,
    ``messageId``, ``code``, ``message``); Segment and RudderStack list none."""
    try:
        body = msgspec.json.decode(answer.body)
    except msgspec.DecodeError:
        return {}
    rejected = body.get("rejected") if isinstance(body, dict) else None
    if not isinstance(rejected, list):
        return {}
    positions = {item.event.message_id: index for index, item in enumerate(chunk)}
    found: dict[int, tuple[int, str]] = {}
    for entry in rejected:
        if not isinstance(entry, dict):
            continue
        index = positions.get(entry.get("messageId"), entry.get("index"))
        if not isinstance(index, int):
            continue
        reason = f"refused by {answer.where}: {entry.get('code', 'rejected')}: {entry.get('message', '')}"
        found[index] = (400, reason.rstrip(": "))
    return found


# --- hooks ------------------------------------------------------------------------------------


@hookimpl
def register_destination_types(register: Callable[[DestinationType], None]) -> None:
    register(
        DestinationType(
            name=TYPE,
            settings=SegmentSettings,
            description="Forward events to a Segment-compatible API (Segment, RudderStack, "
            "SignalSmith)",
            mappings=DEFAULT_MAPPINGS,
        )
    )


def _open(sink: Sink) -> HttpDestination:
    return HttpDestination(sink.settings, name=sink.name, user_agent=USER_AGENT)


async def _close(destination: HttpDestination) -> None:
    await destination.aclose()


@hookimpl
def startup(runtime: Runtime) -> None:
    if runtime.delivers:
        runtime.state[PLUGIN] = DestinationInstances(runtime, _open, _close)


@hookimpl
async def shutdown(runtime: Runtime) -> None:
    instances = runtime.state.pop(PLUGIN, None)
    if isinstance(instances, DestinationInstances):
        await instances.aclose()


@hookimpl
async def deliver_events(
    destination: Sink, events: list[Event], runtime: Runtime
) -> DeliveryReport | None:
    settings: SegmentSettings = destination.settings
    instances = runtime.attached(PLUGIN, DestinationInstances)
    settlement = Settlement()
    chunks = chunked(
        prepare(destination, events, settlement),
        max_events=settings.max_events_per_request,
        max_bytes=settings.max_bytes_per_request,
        overhead=ENVELOPE_BYTES,
    )
    async with instances.use(destination) as http:
        return await http.deliver(
            chunks, request_planner(settings), per_event=receiver_rejections, settlement=settlement
        )
