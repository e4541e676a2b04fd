"""Events and raw messages as the debugger keeps them: write keys hidden, size capped.

The pipeline never puts a write key in an event, but what a client sent may hold one (a single
message's body carries ``writeKey``; anyone may put one in ``properties``): every field named
``writeKey`` or ``write_key``, at any depth, is shown as ``"(hidden)"``. A payload past the cap
is shortened step by step (long strings cut, long lists and objects abridged, deep nesting cut
off) until it fits, and marked truncated; its full size is kept beside it.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec

from signalsmith import Event

HIDDEN = "(hidden)"
_WRITE_KEY_NAME = re.compile(rb"rite(?:Key|_key)")
WRITE_KEY_FIELDS = frozenset({"writeKey", "write_key"})
# Summary fields (event names, user ids) are client strings: shown this long at most.
SUMMARY_CHARS = 200
# The limits a too-large payload is shortened with, tried in turn until it fits:
# (characters per string, items per list, keys per object, depth).
_SHORTENINGS = ((512, 50, 100, 12), (128, 10, 30, 6), (48, 3, 12, 3))

_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder()


class Shown(NamedTuple):
    """A payload as kept: its value (an event, or JSON-like builtins), its full size as JSON
    when it was shortened (else 0), and whether it was."""

    value: Any
    size: int
    truncated: bool


# What lists and filters show of an event: (type, name, userId, anonymousId). A plain tuple:
# one is made per event on the debugger's hot path.
Summary = tuple[str | None, str | None, str | None, str | None]


def event_payload(event: Event, cap: int) -> Shown:
    """The event as kept: itself when its JSON fits ``cap`` and holds no write key; else its
    JSON-like value with write keys hidden, shortened to fit."""
    data = _json.encode(event)
    if len(data) <= cap and not may_hold_write_key(data):
        return Shown(event, 0, False)
    return _fit(msgspec.to_builtins(event), len(data), cap)


def message_payload(raw: bytes, cap: int) -> tuple[Shown, Any]:
    """A raw message (refused before it became an event) as kept, write keys hidden, capped;
    and its decoded value (for the summary), or None when it is not JSON."""
    try:
        value = _decode.decode(raw)
    except msgspec.DecodeError:
        # Not JSON: shown as the text it was (as far as the cap allows).
        text = raw.decode("utf-8", errors="replace")
        return _fit(text, len(raw), cap), None
    if len(raw) <= cap and not may_hold_write_key(raw):
        return Shown(value, 0, False), value
    return _fit(value, len(raw), cap), value


def message_summary(value: Any, path_type: str | None = None) -> tuple[Summary, str | None]:
    """The summary of a raw message (a decoded JSON value), and its messageId when it has one."""
    if not isinstance(value, dict):
        return (path_type, None, None, None), None
    kind = value.get("type")
    kind = kind if isinstance(kind, str) else path_type
    name = value.get("event") if kind == "track" else value.get("name")
    message_id = value.get("messageId")
    summary = (
        _short(kind),
        _short(name),
        _short(_identity(value.get("userId"))),
        _short(_identity(value.get("anonymousId"))),
    )
    return summary, message_id if isinstance(message_id, str) else None


def shorten(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… (+{len(text) - limit} characters)"


def _short(value: Any) -> str | None:
    return shorten(value, SUMMARY_CHARS) if isinstance(value, str) else None


def _identity(value: Any) -> Any:
    # Segment accepts numeric user ids; the pipeline reads them as strings too.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def may_hold_write_key(data: bytes) -> bool:
    """Whether ``data`` (JSON or msgpack) may name a write key (one scan of it)."""
    return _WRITE_KEY_NAME.search(data) is not None


def _fit(value: Any, size: int, cap: int) -> Shown:
    """``value`` with write keys hidden, shortened until its JSON fits ``cap``."""
    hidden = _hide_write_keys(value)
    if len(_json.encode(hidden)) <= cap:
        return Shown(hidden, 0, False)
    for limits in _SHORTENINGS:
        shortened = _abridge(hidden, *limits)
        if len(_json.encode(shortened)) <= cap:
            return Shown(shortened, size, True)
    # Nothing smaller keeps the shape: say what it was.
    return Shown({"(truncated)": f"{size} bytes, too large to show"}, size, True)


def _hide_write_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: HIDDEN if key in WRITE_KEY_FIELDS else _hide_write_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_hide_write_keys(item) for item in value]
    return value


def _abridge(value: Any, chars: int, items: int, keys: int, depth: int) -> Any:
    if isinstance(value, str):
        return shorten(value, chars)
    if depth <= 0 and isinstance(value, dict | list):
        return f"… ({'object' if isinstance(value, dict) else 'list'} nested too deep to show)"
    if isinstance(value, dict):
        kept = {
            shorten(key, chars): _abridge(item, chars, items, keys, depth - 1)
            for key, item in list(value.items())[:keys]
        }
        if len(value) > keys:
            kept["…"] = f"{len(value) - keys} more keys"
        return kept
    if isinstance(value, list):
        kept_items = [_abridge(item, chars, items, keys, depth - 1) for item in value[:items]]
        if len(value) > items:
            kept_items.append(f"… {len(value) - items} more items")
        return kept_items
    return value
