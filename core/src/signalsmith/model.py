"""The event model: the six Segment message types as they are stored and handed to plugins.

Field names are snake_case in Python and camelCase on the wire (``rename="camel"``). Events are
the *normalised* form: every event has a ``message_id``, a server ``received_at`` and a corrected
``timestamp``. What a client sends is checked and turned into these by
:mod:`signalsmith.normalize`; anything the client sent that the spec does not name is kept in
``extra`` so nothing is silently lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec

EventType = Literal["track", "identify", "page", "screen", "group", "alias"]
EVENT_TYPES: tuple[str, ...] = ("track", "identify", "page", "screen", "group", "alias")


class EventBase(
    msgspec.Struct,
    kw_only=True,
    rename="camel",
    tag_field="type",
    omit_defaults=True,
):
    """Fields common to every message type (Segment spec, common fields)."""

    message_id: str
    received_at: datetime
    timestamp: datetime
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    context: dict[str, Any] = {}
    integrations: dict[str, Any] = {}
    # The source (write-key owner) that sent the event; Segment calls it projectId downstream.
    project_id: str = ""
    # Top-level keys the client sent that the spec does not name (`_metadata`, `options`, ...).
    extra: dict[str, Any] = {}

    @property
    def type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class Track(EventBase, tag="track"):
    event: str
    properties: dict[str, Any] = {}


class Identify(EventBase, tag="identify"):
    traits: dict[str, Any] = {}


class Page(EventBase, tag="page"):
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] = {}


class Screen(EventBase, tag="screen"):
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] = {}


class Group(EventBase, tag="group"):
    group_id: str
    traits: dict[str, Any] = {}


class Alias(EventBase, tag="alias"):
    previous_id: str


Event = Track | Identify | Page | Screen | Group | Alias

EVENT_CLASSES: dict[str, type[EventBase]] = {
    "track": Track,
    "identify": Identify,
    "page": Page,
    "screen": Screen,
    "group": Group,
    "alias": Alias,
}

# Wire names of every field a message type declares; anything else a client sends goes to `extra`.
WIRE_FIELDS: dict[str, frozenset[str]] = {
    name: (frozenset(cls.__struct_encode_fields__) | {"type"}) - {"extra"}
    for name, cls in EVENT_CLASSES.items()
}


def to_segment_dict(event: EventBase) -> dict[str, Any]:
    """The event as Segment delivers it downstream: camelCase keys, extras back at the top level."""
    body: dict[str, Any] = msgspec.to_builtins(event)
    extra = body.pop("extra", None)
    if extra:
        for key, value in extra.items():
            body.setdefault(key, value)
    return body


# Binary codec for the buffer: msgpack keeps datetimes and is cheaper than JSON to decode.
event_list_encoder = msgspec.msgpack.Encoder()
event_list_decoder = msgspec.msgpack.Decoder(list[Event])

# The integers msgpack holds; any other is kept as the nearest double (``fit_numbers``).
MSGPACK_INT_MIN, MSGPACK_INT_MAX = -(2**63), 2**64 - 1


class NumberOutOfRange(ValueError):
    """An integer too large even for a double (past about 1.8e308)."""


def fit_numbers(value: Any, path: str = "") -> Any:
    """``value`` with every integer msgpack cannot hold replaced by the nearest double.

    Containers are changed in place. A double is what JavaScript, and so most destinations,
    make of any JSON number; past a double's range there is nothing to keep: NumberOutOfRange.
    """
    kind = type(value)
    if kind is int:
        if MSGPACK_INT_MIN <= value <= MSGPACK_INT_MAX:
            return value
        try:
            return float(value)
        except OverflowError:
            digits = int(value.bit_length() * 0.30103) + 1
            raise NumberOutOfRange(
                f"{path or 'a value'} is an integer of about {digits} digits, beyond what a "
                "double holds (about 1.8e308)"
            ) from None
    if kind is dict:
        for key, item in value.items():
            fitted = fit_numbers(item, f"{path}.{key}" if path else key)
            if fitted is not item:
                value[key] = fitted
    elif kind is list:
        for index, item in enumerate(value):
            fitted = fit_numbers(item, f"{path}[{index}]")
            if fitted is not item:
                value[index] = fitted
    return value


def encode_events(events: Sequence[EventBase]) -> bytes:
    """``events`` in the buffer's encoding (a msgpack list).

    Normalisation already made every client's integer fit; one a plugin made past 64 bits is
    stored as the nearest double too, rather than failing the whole request.
    """
    try:
        return event_list_encoder.encode(events)
    except OverflowError:
        for event in events:
            for name in event.__struct_fields__:
                field = getattr(event, name)
                if type(field) is dict:
                    fit_numbers(field, name)
        return event_list_encoder.encode(events)
