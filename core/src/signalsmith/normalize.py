"""From a parsed request's messages to normalised events: spec checks, ids, timestamps,
envelope merging.

Each message is normalised on its own (``normalise_messages``), so one bad message is reported
and dropped while its neighbours go on. A well-formed message takes a fast path (decoded straight
into a typed struct); anything else takes the general path, which says what is wrong. Both end in
the same tail (``_complete``), which makes the Event.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from signalsmith.json_input import JsonField, JsonIgnored, JsonProblem, decode_json
from signalsmith.model import EVENT_CLASSES, WIRE_FIELDS, Event, EventBase, Track
from signalsmith.parsing import InvalidValue as _Invalid
from signalsmith.parsing import ParsedRequest, beyond_datetime, parse_time, utc
from signalsmith.records import Rejection

MAX_MESSAGE_ID_LENGTH = 100
# Keys that exist only to carry a request and are never stored or forwarded.
TRANSPORT_KEYS = frozenset({"writeKey"})
# Keys the server owns: a client's value is ignored, never kept in `extra`.
SERVER_KEYS = frozenset({"receivedAt", "projectId"})


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


def normalise_message(message: Any, *, path_type: str | None, completion: Completion) -> Event:
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

    original = parse_time(message.get("timestamp"), "timestamp")
    if original is None:
        original = parse_time(message.get("originalTimestamp"), "originalTimestamp")
    try:
        sent_at = parse_time(message.get("sentAt"), "sentAt")
    except _Invalid:
        # sentAt is transport metadata: an unreadable one only costs the skew correction.
        sent_at = None
    known = WIRE_FIELDS[event_type]
    return completion.event(
        cls,
        fields,
        raw_message_id,
        user_id,
        anonymous_id,
        _object(message, "context"),
        _object(message, "integrations"),
        original,
        sent_at,
        {
            key: value
            for key, value in message.items()
            if key not in known and key not in TRANSPORT_KEYS and key not in SERVER_KEYS
        },
    )


class Completion:
    """What every message of one request ends in (``event``), once its own fields are
    checked: the batch's context and integrations merged under the message's,
    ``context.library`` and the browser's ``context.ip`` defaulted, the clock-skew-corrected
    timestamp, a messageId if it had none. Made once per request: the per-message call takes
    only what differs between messages, by position (keyword arguments cost more, and this runs
    for every event)."""

    __slots__ = ("client_ip", "context", "integrations", "received_at", "sent_at", "source_id")

    def __init__(
        self,
        request: ParsedRequest,
        received_at: datetime,
        source_id: str,
        client_ip: str | None,
    ) -> None:
        self.context = request.context
        self.integrations = request.integrations
        self.sent_at = request.sent_at
        self.received_at = received_at
        self.source_id = source_id
        self.client_ip = client_ip

    def event(
        self,
        cls: type[EventBase],
        fields: dict[str, Any],
        message_id: str | None,
        user_id: str | None,
        anonymous_id: str | None,
        context: dict[str, Any],
        integrations: dict[str, Any],
        original: datetime | None,
        sent_at: datetime | None,
        extra: dict[str, Any],
        /,
    ) -> Event:
        # The dicts are this request's own (decoded for it), so they are completed in place.
        if self.context:
            context = {**self.context, **context}
        if "library" not in context:
            context["library"] = dict(UNKNOWN_LIBRARY)
        client_ip = self.client_ip
        if client_ip and "ip" not in context:
            context["ip"] = client_ip
        if self.integrations:
            integrations = {**self.integrations, **integrations}
        sent_at = sent_at or self.sent_at
        received_at = self.received_at
        if original is not None and sent_at is not None:
            # Segment's clock-skew correction: the device clock's offset is sentAt - receivedAt.
            try:
                timestamp = received_at - (sent_at - original)
            except OverflowError:
                timestamp = beyond_datetime(original > sent_at)
        else:
            timestamp = original or received_at
        if cls is Track:
            # Spelled out for the commonest type: unpacking **fields costs more than the rest.
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
                project_id=self.source_id,
                extra=extra,
                event=fields["event"],
                properties=fields["properties"],
            )
        return cls(  # type: ignore[return-value]
            message_id=message_id or new_message_id(),
            received_at=received_at,
            timestamp=timestamp,
            original_timestamp=original,
            sent_at=sent_at,
            user_id=user_id,
            anonymous_id=anonymous_id,
            context=context,
            integrations=integrations,
            project_id=self.source_id,
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


def _fast_event(
    raw: bytes | msgspec.Raw, *, path_type: str | None, completion: Completion
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
        fields["event"] = name
        fields["properties"] = properties
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

    context = _object_or_empty(wire.context)
    integrations = _object_or_empty(wire.integrations)
    if context is None or integrations is None:
        return None
    original = utc(wire.timestamp)
    if original is None:
        original = utc(wire.originalTimestamp)
    return completion.event(
        cls,
        fields,
        message_id,
        user_id,
        anonymous_id,
        context,
        integrations,
        original,
        utc(wire.sentAt),
        {} if wire.metadata is _UNSET else {"_metadata": wire.metadata},
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
    completion = Completion(request, received_at, source_id, client_ip)
    for index, raw in enumerate(request.messages):
        if len(raw) <= max_message_bytes:
            fast = _fast_event(raw, path_type=path_type, completion=completion)
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
            event = normalise_message(message, path_type=path_type, completion=completion)
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
