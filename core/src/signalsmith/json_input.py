"""Client JSON, read into values that the buffer, the worker and every plugin can hold.

msgspec reads any valid JSON, but three kinds of valid JSON break what comes after it:

- nesting: msgspec recurses once per level and raises RecursionError at about 1,000 levels
  (Python's recursion limit), and so do the buffer's msgpack, the worker and plugins that walk
  values. A message may nest ``MAX_NESTING_DEPTH`` levels (itself being the first).
- integers past 64 bits, which msgpack (the buffer's encoding) cannot hold: such an integer is
  kept as the nearest double, as JavaScript and most JSON readers take any JSON number.
- numbers past a double's range (``1e400``, an integer of 309 digits): refused.

The common message costs nothing extra for this: it is decoded with a type that admits every
JSON value up to ``TYPED_DEPTH`` levels with integers within int64, which msgspec checks while it
parses. Only a message outside that (deeper, or with a bigger integer) is checked the slow way.

And some bodies that strict parsers refuse are made readable (``repaired_json``), because real
clients send them and refusing one would lose a whole batch: bytes that are not UTF-8 and lone
UTF-16 surrogate escapes become U+FFFD, and ``NaN``/``Infinity`` become ``null``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import msgspec

from signalsmith.model import NumberOutOfRange, fit_numbers

# Levels of objects and arrays in one message, the message itself being the first. Below what
# Python's recursion allows with room to spare for plugins that walk values recursively.
MAX_NESTING_DEPTH = 64
# Levels the typed decoders check while parsing. Each level doubles the time to build a decoder
# (msgspec does not share the nodes of `list[T]` and `dict[str, T]`): about 5 ms at 8, per field.
TYPED_DEPTH = 8
# A body nested deeper than this is cut here before decoding (``repaired_json``): deeper than any
# message can be inside a batch body (the body, its `batch` array, then the message).
_CUT_DEPTH = MAX_NESTING_DEPTH + 3

_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


def json_value_type(depth: int) -> Any:
    """Any JSON value nested at most ``depth`` levels, with integers within int64."""
    value: Any = None | bool | _Int64 | float | str
    for _ in range(depth):
        value = None | bool | _Int64 | float | str | list[value] | dict[str, value]
    return value


# The type of a value inside a message (context, properties, ...): one level below the message.
JsonField = json_value_type(TYPED_DEPTH - 1)
# A value that is read only to be dropped (transport keys): any deeper one takes the general path.
JsonIgnored = json_value_type(2)
_typed_decoder = msgspec.json.Decoder(json_value_type(TYPED_DEPTH))


class JsonProblem(Exception):
    """Valid JSON that cannot be kept: ``code`` and ``message`` say why."""

    def __init__(self, code: str, message: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise JsonProblem(
            "number_out_of_range",
            f"the number {text[:40]} is beyond what a double holds (about 1.8e308)",
        )
    return number


_lenient_decoder = msgspec.json.Decoder(float_hook=_finite_float)


def decode_json(raw: bytes | msgspec.Raw, *, max_depth: int = MAX_NESTING_DEPTH) -> Any:
    """One message (or a batch's context) as Python values every later stage can hold.

    Raises ``JsonProblem`` when it nests more than ``max_depth`` levels or holds a number no
    double holds, and ``msgspec.DecodeError`` when it is not JSON even once repaired.
    """
    try:
        return _typed_decoder.decode(raw)
    except msgspec.ValidationError:
        pass  # deeper than the typed decoder looks, or a number beyond int64: see below
    except msgspec.DecodeError:
        repaired = repaired_json(bytes(raw))
        if repaired is None:
            raise
        raw = repaired
        try:
            return _typed_decoder.decode(raw)
        except msgspec.ValidationError:
            pass
    return _decode_unusual(bytes(raw), max_depth)


def _decode_unusual(data: bytes, max_depth: int) -> Any:
    # Counting brackets is cheap; the exact depth is only needed past max_depth of them.
    brackets = data.count(b"{") + data.count(b"[")
    if brackets > max_depth and nesting_depth(data) > max_depth:
        raise JsonProblem(
            "nesting_too_deep",
            f"objects and arrays nest more than {max_depth} levels deep "
            "(the message itself is the first)",
            _message_id(data),
        )
    try:
        value = _lenient_decoder.decode(data)
    except msgspec.ValidationError as error:  # an integer of more than 4,300 digits
        raise JsonProblem(
            "number_out_of_range", f"a number is beyond what a double holds: {error}"
        ) from None
    try:
        return fit_numbers(value)
    except NumberOutOfRange as problem:
        message_id = value.get("messageId") if type(value) is dict else None
        raise JsonProblem(
            "number_out_of_range",
            str(problem),
            message_id if isinstance(message_id, str) else None,
        ) from None


def _message_id(data: bytes) -> str | None:
    """The messageId of a message too deep to decode whole, for its rejection report."""
    try:
        value = _lenient_decoder.decode(cut_deep_values(data, 2))
    except (msgspec.DecodeError, JsonProblem):
        return None
    message_id = value.get("messageId") if type(value) is dict else None
    return message_id if isinstance(message_id, str) else None


# A JSON string (escapes included) or one bracket; strings are matched whole so that brackets
# inside them are skipped.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING)
_STRING_OR_BRACKET = re.compile(_STRING + rb"|[\[\]{}]")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_OPENING = frozenset(b"[{")


def nesting_depth(data: bytes) -> int:
    """How many levels of objects and arrays ``data`` nests, without recursing."""
    skeleton = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in skeleton:
        if byte in _OPENING:
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def cut_deep_values(data: bytes, depth: int) -> bytes:
    """``data`` with every object or array that opens at level ``depth`` replaced by ``[]``.

    Nothing then nests deeper than ``depth``, and whatever was deeper still is (by one level
    more than any limit below ``depth``), so it is refused for its depth, not lost silently.
    """
    pieces: list[bytes] = []
    level = 0
    kept_to = 0
    cut_from = -1
    for match in _STRING_OR_BRACKET.finditer(data):
        first = data[match.start()]
        if first == 0x22:  # a string
            continue
        if first in _OPENING:
            level += 1
            if level == depth and cut_from < 0:
                cut_from = match.start()
        else:
            if level == depth and cut_from >= 0:
                pieces += (data[kept_to:cut_from], b"[]")
                kept_to = match.end()
                cut_from = -1
            level -= 1
    pieces.append(data[kept_to:])
    return b"".join(pieces)


# `\uD800`-`\uDBFF` (high) must be followed by `\uDC00`-`\uDFFF` (low). A backslash escapes
# only if the run of backslashes before the `u` is odd (`\\ud800` is a backslash, then text).
_SURROGATE_ESCAPE = re.compile(
    rb"(\\+)u([dD][89abAB][0-9a-fA-F]{2})(\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    rb"|(\\+)u([dD][c-fC-F][0-9a-fA-F]{2})"
)
_REPLACEMENT_ESCAPE = b"\\ufffd"


def _replace_lone_surrogate(match: re.Match[bytes]) -> bytes:
    if match[1] is None:  # a low surrogate with no high one before it
        slashes = match[4]
        if len(slashes) % 2 == 0:
            return match[0]
        return slashes[:-1] + _REPLACEMENT_ESCAPE
    slashes, low = match[1], match[3]
    if len(slashes) % 2 == 0:  # not an escape; a low escape after it is then alone
        return slashes + b"u" + match[2] + (_REPLACEMENT_ESCAPE if low else b"")
    if low:
        return match[0]
    return slashes[:-1] + _REPLACEMENT_ESCAPE


_STRING_OR_NON_FINITE = re.compile(_STRING + rb"|-?Infinity|NaN")


def _null_for_non_finite(match: re.Match[bytes]) -> bytes:
    token = match[0]
    return token if token[:1] == b'"' else b"null"


def repaired_json(data: bytes) -> bytes | None:
    """``data`` with what strict JSON parsers refuse, but real clients send, made readable.

    - bytes that are not UTF-8 become U+FFFD, as Go's encoding/json and browsers read them;
    - a lone UTF-16 surrogate escape (half an emoji, cut by a JavaScript ``slice``) becomes
      ``\\ufffd``, as Go's encoding/json reads it;
    - ``NaN``, ``Infinity`` and ``-Infinity`` (Python's ``json.dumps`` writes them) become
      ``null``, as JavaScript's ``JSON.stringify`` writes them;
    - nesting past what the decoder can recurse is cut (``cut_deep_values``), so that the
      message holding it is refused alone.

    None when there is nothing of the kind: ``data`` is then simply not JSON.
    """
    repaired = data
    try:
        repaired.decode("utf-8")
    except UnicodeDecodeError:
        repaired = repaired.decode("utf-8", "replace").encode("utf-8")
    if b"\\u" in repaired:
        repaired = _SURROGATE_ESCAPE.sub(_replace_lone_surrogate, repaired)
    if b"NaN" in repaired or b"Infinity" in repaired:
        repaired = _STRING_OR_NON_FINITE.sub(_null_for_non_finite, repaired)
    if nesting_depth(repaired) > _CUT_DEPTH:
        repaired = cut_deep_values(repaired, _CUT_DEPTH)
    return None if repaired == data else repaired
