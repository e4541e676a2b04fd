"""The event model: the six Segment message types as they are stored and handed to plugins.

Field names are snake_case in Python and camelCase on the wire (``rename="camel"``). Events are
the *normalised* form: every event has a ``message_id``, a server ``received_at`` and a corrected
``timestamp``. What a client sends is checked and turned into these by
:mod:`signalsmith.normalize`; anything the client sent that the spec does not name is kept in
``extra`` so nothing is silently lost.
"""

from __future__ import annotations

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
