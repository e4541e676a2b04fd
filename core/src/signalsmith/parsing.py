"""From request bytes to a ParsedRequest: the body's shape, its write key, its messages.

A request is parsed once, before any message is checked, so its write key and message count are
known for authentication and rate limits; its messages stay raw JSON slices, each normalised on
its own afterwards (``signalsmith.normalize``). This is also the one place that says which write
keys a request offers (``offered_write_keys``).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import msgspec

from signalsmith.json_input import MAX_NESTING_DEPTH, JsonProblem, decode_json, repaired_json


class RequestError(Exception):
    """The request as a whole is unusable (not JSON, wrong shape, too many messages).

    ``too_large`` tells a request over a size limit (split it) from one that cannot be read.
    """

    def __init__(self, code: str, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.too_large = too_large


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
                too_large=True,
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
            too_large=True,
        )
    sent_at = None
    try:
        sent_at = parse_time(envelope.sentAt, "sentAt")
    except InvalidValue:
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


class InvalidValue(Exception):
    """One value of a message that cannot be read (a timestamp, an id): its code and why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_time(value: Any, field: str) -> datetime | None:
    """An ISO-8601 timestamp (``Z``, offsets, microseconds) as an aware UTC datetime."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidValue(
            "invalid_timestamp", f"{field} must be an ISO-8601 string, got {value!r}"
        )
    try:
        parsed = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidValue(
                "invalid_timestamp",
                f"{field} is not an ISO-8601 timestamp: {value[:64]!r} "
                "(expected e.g. 2026-11-26T03:17:52.952Z)",
            ) from None
    return utc(parsed)


def utc(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC (naive times are taken as UTC), kept within what a datetime holds."""
    if moment is None or moment.tzinfo is UTC:  # msgspec reads `Z` and `+00:00` as UTC itself
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # within hours of year 1 or 9999, an offset can move it past either
        return beyond_datetime(moment.year > 1)


_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def beyond_datetime(later: bool) -> datetime:
    """The time kept for one past what a datetime holds (years 1-9999): the nearest it holds.

    A timestamp of 9999-12-31 (a placeholder some clients send) is kept as sent; the skew
    correction or a UTC offset can move it just past, and the event is not lost for that.
    """
    return _LATEST if later else _EARLIEST


# --- write keys -------------------------------------------------------------------------------


def write_keys_from_authorization(value: bytes | None) -> list[str]:
    """The write key in ``Authorization``: Basic ``key:`` or bare ``key``, or a Bearer token."""
    if not value:
        return []
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if not token:
        return []
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return []
        username = decoded.partition(":")[0]
        return [username] if username else []
    if scheme.lower() == "bearer":
        return [token]
    return []


def offered_write_keys(authorization: bytes | None, body_key: str | None) -> tuple[str, ...]:
    """Every write key a request offers, in the order to try them: the ``Authorization``
    header's, then the body's ``writeKey`` when it is another (analytics-next sends both)."""
    keys = write_keys_from_authorization(authorization)
    if body_key and body_key not in keys:
        keys.append(body_key)
    return tuple(keys)
