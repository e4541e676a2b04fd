"""From request bytes to normalised events: spec checks, ids, timestamps, envelope merging.

A request is parsed once (``parse_request``) so its write key and message count are known
before any message is checked; each message is then normalised on its own
(``normalise_messages``), so one bad message is reported and dropped while its neighbours go on.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from signalsmith.json_input import (
    MAX_NESTING_DEPTH,
    JsonField,
    JsonIgnored,
    JsonProblem,
    decode_json,
    repaired_json,
)
from signalsmith.model import EVENT_CLASSES, WIRE_FIELDS, Event, Track
from signalsmith.records import Rejection

MAX_MESSAGE_ID_LENGTH = 100
# Keys that exist only to carry a request and are never stored or forwarded.
TRANSPORT_KEYS = frozenset({"writeKey"})
# Keys the server owns: a client's value is ignored, never kept in `extra`.
SERVER_KEYS = frozenset({"receivedAt", "projectId"})


class RequestError(Exception):
    """The request as a whole is unusable (not JSON, wrong shape, too many messages)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


_ABSENT = msgspec.Raw(b"")


class _Envelope(msgspec.Struct):
    """The top level of any body; for a single message these are the message's own fields.

    Nested values stay raw JSON slices: a single message never needs them decoded here, and a
    batch's items are sized and decoded one by one.
    """

    batch: msgspec.Raw = _ABSENT
    context: msgspec.Raw = _ABSENT
    integrations: msgspec.Raw = _ABSENT
    sentAt: Any = None
    writeKey: Any = None


class _BatchEnvelope(msgspec.Struct):
    """A batch body in one pass: its items as raw slices (the usual shape of a batch request)."""

    batch: list[msgspec.Raw]
    context: msgspec.Raw = _ABSENT
    integrations: msgspec.Raw = _ABSENT
    sentAt: Any = None
    writeKey: Any = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_batch_envelope_decoder = msgspec.json.Decoder(_BatchEnvelope)
_batch_items_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_UTF8_BOM = b"\xef\xbb\xbf"


class ParsedRequest(msgspec.Struct, kw_only=True):
    """A decoded body: its raw messages and what the batch envelope says about all of them."""

    messages: list[bytes | msgspec.Raw]
    is_batch: bool
    write_key: str | None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    sent_at: datetime | None = None


class _Unreadable(RequestError):
    """The body is not JSON (or nests too deep to read): ``repaired_json`` may help."""


def parse_request(
    body: bytes, *, batch: bool | None, max_messages: int, max_message_bytes: int
) -> ParsedRequest:
    """Decode a body into its messages without checking them.

    ``batch`` is True for batch endpoints (the body must hold ``batch: [...]``), False for
    single-message endpoints, None where either shape is accepted (`/api/v1/events`).
    """
    if body.startswith(_UTF8_BOM):  # Windows tools write one; JSON readers skip it
        body = body[len(_UTF8_BOM) :]
    try:
        return _parse_shape(
            body, batch=batch, max_messages=max_messages, max_message_bytes=max_message_bytes
        )
    except (_Unreadable, RecursionError) as error:
        # What a strict parser refuses but clients send (see `repaired_json`) costs one bad
        # message at most, not the whole batch; anything else is the first error.
        unreadable = _unreadable(error)
        repaired = repaired_json(body)
        if repaired is None:
            raise unreadable from None
    try:
        return _parse_shape(
            repaired, batch=batch, max_messages=max_messages, max_message_bytes=max_message_bytes
        )
    except (_Unreadable, RecursionError):
        raise unreadable from None


def _unreadable(error: Exception) -> _Unreadable:
    if isinstance(error, _Unreadable):
        return error
    # msgspec recurses once per level, even through the raw slices it skips.
    return _Unreadable(
        "nesting_too_deep",
        "body nests objects and arrays too deep to read "
        f"(a message may nest {MAX_NESTING_DEPTH} levels)",
    )


def _parse_shape(
    body: bytes, *, batch: bool | None, max_messages: int, max_message_bytes: int
) -> ParsedRequest:
    if batch:
        # One pass over a well-formed batch body; any other body takes the two-step path below,
        # which says exactly what is wrong with it.
        try:
            whole = _batch_envelope_decoder.decode(body)
        except msgspec.DecodeError:
            pass
        else:
            write_key = whole.writeKey if isinstance(whole.writeKey, str) else None
            return _batch_request(whole.batch, whole, write_key, max_messages)
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError:
        raise RequestError("invalid_json", "body must be a JSON object") from None
    except msgspec.DecodeError as error:
        raise _Unreadable("invalid_json", f"body is not valid JSON: {error}") from None
    write_key = envelope.writeKey if isinstance(envelope.writeKey, str) else None
    has_batch = len(envelope.batch) > 0 and bytes(envelope.batch) != b"null"
    is_batch = has_batch if batch is None else batch
    if not is_batch:
        if len(body) > max_message_bytes:
            raise RequestError(
                "message_too_large",
                f"message is {len(body)} bytes; at most {max_message_bytes} bytes per message",
                status=413,
            )
        return ParsedRequest(messages=[body], is_batch=False, write_key=write_key)
    try:
        items = _batch_items_decoder.decode(envelope.batch) if has_batch else None
    except msgspec.ValidationError:
        items = None
    if items is None:
        raise RequestError(
            "invalid_batch", 'a batch body must be {"batch": [message, ...]} with an array'
        )
    return _batch_request(items, envelope, write_key, max_messages)


def _batch_request(
    items: list[msgspec.Raw],
    envelope: _Envelope | _BatchEnvelope,
    write_key: str | None,
    max_messages: int,
) -> ParsedRequest:
    if len(items) > max_messages:
        raise RequestError(
            "too_many_messages",
            f"a batch holds at most {max_messages} messages; this one has "
            f"{len(items)}: split it into smaller batches",
            status=413,
        )
    sent_at = None
    try:
        sent_at = parse_time(envelope.sentAt, "sentAt")
    except _Invalid:
        sent_at = None  # an unreadable envelope sentAt only disables skew correction
    return ParsedRequest(
        messages=items,
        is_batch=True,
        write_key=write_key,
        context=_envelope_object(envelope.context, "context"),
        integrations=_envelope_object(envelope.integrations, "integrations"),
        sent_at=sent_at,
    )


def _envelope_object(raw: msgspec.Raw, name: str) -> dict[str, Any] | None:
    """A batch-level object merged into every item; anything but an object is ignored."""
    if not len(raw):
        return None
    try:
        # Merged into each message one level down, so it may nest one level less.
        value = decode_json(raw, max_depth=MAX_NESTING_DEPTH - 1)
    except JsonProblem as problem:
        raise RequestError(problem.code, f"the batch's {name}: {problem.message}") from None
    except msgspec.DecodeError as error:
        raise RequestError("invalid_json", f"the batch's {name} is not JSON: {error}") from None
    return value if isinstance(value, dict) and value else None


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_time(value: Any, field: str) -> datetime | None:
    """An ISO-8601 timestamp (``Z``, offsets, microseconds) as an aware UTC datetime."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid("invalid_timestamp", f"{field} must be an ISO-8601 string, got {value!r}")
    try:
        parsed = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _Invalid(
                "invalid_timestamp",
                f"{field} is not an ISO-8601 timestamp: {value[:64]!r} "
                "(expected e.g. 2026-11-26T03:17:52.952Z)",
            ) from None
    return _utc(parsed)


def _identifier(message: dict[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Some clients send numeric ids; Segment stores them as strings.
        return str(value)
    raise _Invalid("invalid_field", f"{key} must be a string, got {type(value).__name__}")


def _object(message: dict[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid("invalid_field", f"{key} must be a JSON object, got {type(value).__name__}")
    return value


def _text(message: dict[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Invalid("invalid_field", f"{key} must be a string, got {type(value).__name__}")


def new_message_id() -> str:
    return f"ss-{uuid.uuid4()}"


UNKNOWN_LIBRARY = {"name": "unknown", "version": "unknown"}


def normalise_message(
    message: Any,
    *,
    path_type: str | None,
    request: ParsedRequest,
    received_at: datetime,
    source_id: str,
    client_ip: str | None = None,
) -> Event:
    """Check one decoded message against the spec and return it as a normalised Event.

    Raises ``_Invalid`` with a code and a message naming the problem.
    """
    if not isinstance(message, dict):
        raise _Invalid(
            "not_an_object", f"a message must be a JSON object, got {type(message).__name__}"
        )
    event_type = path_type or message.get("type")
    if event_type is None:
        raise _Invalid(
            "missing_type",
            "type is required in a batch message (track, identify, page, screen, group, alias)",
        )
    cls = EVENT_CLASSES.get(event_type) if isinstance(event_type, str) else None
    if cls is None:
        raise _Invalid(
            "invalid_type",
            f"type {event_type!r} is not one of track, identify, page, screen, group, alias",
        )

    raw_message_id = _identifier(message, "messageId")
    if raw_message_id is not None and len(raw_message_id) > MAX_MESSAGE_ID_LENGTH:
        raise _Invalid(
            "message_id_too_long",
            f"messageId is {len(raw_message_id)} characters; at most {MAX_MESSAGE_ID_LENGTH}",
        )
    user_id = _identifier(message, "userId")
    anonymous_id = _identifier(message, "anonymousId")

    fields: dict[str, Any] = {}
    if event_type == "alias":
        previous_id = _identifier(message, "previousId")
        if previous_id is None:
            raise _Invalid("missing_previous_id", "alias requires previousId")
        if user_id is None:
            raise _Invalid("missing_user_id", "alias requires userId")
        fields["previous_id"] = previous_id
    elif user_id is None and anonymous_id is None:
        # Segment's rule for every call; analytics-node would also let a group through with
        # only groupId, but such an event could never be joined to a person downstream.
        raise _Invalid("missing_user_id", "userId or anonymousId is required")

    if event_type == "track":
        name = message.get("event")
        if name is not None and not isinstance(name, str):
            raise _Invalid("invalid_field", f"event must be a string, got {type(name).__name__}")
        if not name or not name.strip():
            raise _Invalid("missing_event", "track requires event, a non-empty string")
        fields["event"] = name
        fields["properties"] = _object(message, "properties")
    elif event_type == "group":
        group_id = _identifier(message, "groupId")
        if group_id is None:
            raise _Invalid("missing_group_id", "group requires groupId")
        fields["group_id"] = group_id
        fields["traits"] = _object(message, "traits")
    elif event_type == "identify":
        fields["traits"] = _object(message, "traits")
    elif event_type in ("page", "screen"):
        fields["name"] = _text(message, "name")
        fields["category"] = _text(message, "category")
        fields["properties"] = _object(message, "properties")

    context = _object(message, "context")
    if request.context:
        context = {**request.context, **context}
    else:
        context = dict(context)
    if "library" not in context:
        context["library"] = dict(UNKNOWN_LIBRARY)
    if client_ip and "ip" not in context:
        context["ip"] = client_ip
    integrations = _object(message, "integrations")
    if request.integrations:
        integrations = {**request.integrations, **integrations}

    original = parse_time(message.get("timestamp"), "timestamp")
    if original is None:
        original = parse_time(message.get("originalTimestamp"), "originalTimestamp")
    try:
        sent_at = parse_time(message.get("sentAt"), "sentAt") or request.sent_at
    except _Invalid:
        # sentAt is transport metadata: an unreadable one only costs the skew correction.
        sent_at = request.sent_at
    if original is not None and sent_at is not None:
        # Segment's clock-skew correction: the device clock's offset is sentAt - receivedAt.
        try:
            timestamp = received_at - (sent_at - original)
        except OverflowError:
            timestamp = _beyond_datetime(original > sent_at)
    else:
        timestamp = original or received_at

    known = WIRE_FIELDS[event_type]
    extra = {
        key: value
        for key, value in message.items()
        if key not in known and key not in TRANSPORT_KEYS and key not in SERVER_KEYS
    }
    return cls(
        message_id=raw_message_id or new_message_id(),
        received_at=received_at,
        timestamp=timestamp,
        original_timestamp=original,
        sent_at=sent_at,
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        integrations=integrations,
        project_id=source_id,
        extra=extra,
        **fields,
    )


# --- the fast path ------------------------------------------------------------------------------
#
# Most messages are already well-formed: string ids, RFC 3339 timestamps, objects where objects
# belong, and no top-level keys beyond the spec's (plus `_metadata`, which every Segment library
# sends). Such a message is decoded straight into `_WireMessage`, whose types msgspec checks in C
# while it parses, instead of into a dict that `normalise_message` then checks key by key (about
# three times the work). Anything the fast path is not sure about (a wrong type, an unknown or
# misplaced key, a missing field) makes it return None, and the message goes through
# `normalise_message`, which produces the same Event or the rejection with its reason: the fast
# path can only ever make the same decision faster.


class _WireMessage(msgspec.Struct, forbid_unknown_fields=True):
    """One message as Segment clients send it; UNSET tells an absent key from a null one."""

    type: str | None = None
    messageId: str | None = None
    userId: str | None = None
    anonymousId: str | None = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    # Objects are typed as any JSON value and checked with isinstance: msgspec's dict[str, ...]
    # would check every key again, and JSON object keys are strings anyway. JsonField bounds
    # their depth and integers while msgspec parses (see json_input); a message past either
    # takes the general path.
    context: JsonField = None
    integrations: JsonField = None
    event: str | msgspec.UnsetType | None = msgspec.UNSET
    properties: JsonField | msgspec.UnsetType = msgspec.UNSET
    traits: JsonField | msgspec.UnsetType = msgspec.UNSET
    name: str | msgspec.UnsetType | None = msgspec.UNSET
    category: str | msgspec.UnsetType | None = msgspec.UNSET
    groupId: str | msgspec.UnsetType | None = msgspec.UNSET
    previousId: str | msgspec.UnsetType | None = msgspec.UNSET
    metadata: JsonField | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="_metadata")
    # Transport and server keys: accepted and never kept (TRANSPORT_KEYS, SERVER_KEYS).
    writeKey: JsonIgnored = None
    receivedAt: JsonIgnored = None
    projectId: JsonIgnored = None


_wire_decoder = msgspec.json.Decoder(_WireMessage)
_TYPE_FIELDS = ("event", "properties", "traits", "name", "category", "groupId", "previousId")
# Type-specific keys each type declares; the others would belong in `extra` (slow path).
_OWN_FIELDS = {
    "track": ("event", "properties"),
    "identify": ("traits",),
    "page": ("name", "category", "properties"),
    "screen": ("name", "category", "properties"),
    "group": ("groupId", "traits"),
    "alias": ("previousId",),
}
_FOREIGN_FIELDS = {
    kind: tuple(name for name in _TYPE_FIELDS if name not in own)
    for kind, own in _OWN_FIELDS.items()
}
_UNSET = msgspec.UNSET


def _object_or_empty(value: Any) -> dict[str, Any] | None:
    """A message's object field: {} when absent or null, None when it is not an object."""
    if value is None or value is _UNSET:
        return {}
    return value if type(value) is dict else None


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is UTC:  # msgspec reads `Z` and `+00:00` as UTC itself
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # within hours of year 1 or 9999, an offset can move it past either
        return _beyond_datetime(moment.year > 1)


_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def _beyond_datetime(later: bool) -> datetime:
    """The time kept for one past what a datetime holds (years 1-9999): the nearest it holds.

    A timestamp of 9999-12-31 (a placeholder some clients send) is kept as sent; the skew
    correction or a UTC offset can move it just past, and the event is not lost for that.
    """
    return _LATEST if later else _EARLIEST


def _fast_event(
    raw: bytes | msgspec.Raw,
    *,
    path_type: str | None,
    request: ParsedRequest,
    received_at: datetime,
    source_id: str,
    client_ip: str | None,
) -> Event | None:
    """The normalised Event of a well-formed message, or None to take the general path."""
    try:
        wire = _wire_decoder.decode(raw)
    except msgspec.DecodeError:  # ValidationError included: the general path says what is wrong
        return None
    event_type = path_type or wire.type
    cls = EVENT_CLASSES.get(event_type) if event_type is not None else None
    if cls is None:
        return None
    for name in _FOREIGN_FIELDS[event_type]:
        if getattr(wire, name) is not _UNSET:
            return None
    message_id = wire.messageId or None
    if message_id is not None and len(message_id) > MAX_MESSAGE_ID_LENGTH:
        return None
    user_id = wire.userId or None
    anonymous_id = wire.anonymousId or None
    if user_id is None and anonymous_id is None and event_type != "alias":
        return None
    fields: dict[str, Any] = {}
    if event_type == "track":
        name = wire.event
        properties = _object_or_empty(wire.properties)
        if not name or not name.strip() or properties is None:  # type: ignore[union-attr]
            return None
    elif event_type == "identify" or event_type == "group":
        traits = _object_or_empty(wire.traits)
        if traits is None:
            return None
        fields["traits"] = traits
        if event_type == "group":
            fields["group_id"] = wire.groupId or None
            if fields["group_id"] is None:
                return None
    elif event_type == "alias":
        fields["previous_id"] = wire.previousId or None
        if fields["previous_id"] is None or user_id is None:
            return None
    else:  # page, screen
        fields["properties"] = _object_or_empty(wire.properties)
        if fields["properties"] is None:
            return None
        fields["name"] = None if wire.name is _UNSET else wire.name
        fields["category"] = None if wire.category is _UNSET else wire.category

    # The decoded dicts are this request's own, so they are completed in place.
    context = _object_or_empty(wire.context)
    integrations = _object_or_empty(wire.integrations)
    if context is None or integrations is None:
        return None
    if request.context:
        context = {**request.context, **context}
    if "library" not in context:
        context["library"] = dict(UNKNOWN_LIBRARY)
    if client_ip and "ip" not in context:
        context["ip"] = client_ip
    if request.integrations:
        integrations = {**request.integrations, **integrations}

    original = _utc(wire.timestamp)
    if original is None:
        original = _utc(wire.originalTimestamp)
    sent_at = _utc(wire.sentAt) or request.sent_at
    if original is not None and sent_at is not None:
        try:
            timestamp = received_at - (sent_at - original)
        except OverflowError:
            timestamp = _beyond_datetime(original > sent_at)
    else:
        timestamp = original or received_at
    extra = {} if wire.metadata is _UNSET else {"_metadata": wire.metadata}
    if event_type == "track":
        # Spelled out for the commonest type: unpacking **fields costs more than the rest here.
        return Track(
            message_id=message_id or new_message_id(),
            received_at=received_at,
            timestamp=timestamp,
            original_timestamp=original,
            sent_at=sent_at,
            user_id=user_id,
            anonymous_id=anonymous_id,
            context=context,
            integrations=integrations,
            project_id=source_id,
            extra=extra,
            event=name,
            properties=properties,
        )
    return cls(
        message_id=message_id or new_message_id(),
        received_at=received_at,
        timestamp=timestamp,
        original_timestamp=original,
        sent_at=sent_at,
        user_id=user_id,
        anonymous_id=anonymous_id,
        context=context,
        integrations=integrations,
        project_id=source_id,
        extra=extra,
        **fields,
    )


class NormalisedBatch(msgspec.Struct, kw_only=True):
    events: list[Event]
    # Index in the request of each event, for reporting later-stage drops by position.
    indexes: list[int]
    rejected: list[Rejection]


def normalise_messages(
    request: ParsedRequest,
    *,
    path_type: str | None,
    received_at: datetime,
    source_id: str,
    max_message_bytes: int,
    client_ip: str | None = None,
) -> NormalisedBatch:
    """Normalise every message of a request; the bad ones become Rejections by index."""
    events: list[Event] = []
    indexes: list[int] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(request.messages):
        if len(raw) <= max_message_bytes:
            fast = _fast_event(
                raw,
                path_type=path_type,
                request=request,
                received_at=received_at,
                source_id=source_id,
                client_ip=client_ip,
            )
            if fast is not None:
                events.append(fast)
                indexes.append(index)
                continue
        message_id: str | None = None
        try:
            message = decode_json(raw)
            if isinstance(message, dict):
                candidate = message.get("messageId")
                message_id = candidate if isinstance(candidate, str) else None
            size = len(raw)
            if size > max_message_bytes:
                raise _Invalid(
                    "message_too_large",
                    f"message is {size} bytes; at most {max_message_bytes} bytes per message",
                )
            event = normalise_message(
                message,
                path_type=path_type,
                request=request,
                received_at=received_at,
                source_id=source_id,
                client_ip=client_ip,
            )
        except (_Invalid, JsonProblem) as problem:
            if isinstance(problem, JsonProblem):
                message_id = problem.message_id
            rejected.append(
                Rejection(
                    index=index, message_id=message_id, code=problem.code, message=problem.message
                )
            )
            continue
        except msgspec.DecodeError as error:
            rejected.append(
                Rejection(index=index, message_id=None, code="invalid_json", message=str(error))
            )
            continue
        events.append(event)
        indexes.append(index)
    return NormalisedBatch(events=events, indexes=indexes, rejected=rejected)
