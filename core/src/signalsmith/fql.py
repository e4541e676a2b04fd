"""FQL: the small, safe condition language of Segment's destination filters, as one parser.

Every condition a user writes (a filter transform's `if`, a destination's routing rules and
mapping triggers) is parsed here once, when the configuration is loaded, into a tree of
closures; evaluating it per event is a few function calls, never ``eval``. The language is
Segment's FQL (`shared/reference/plans-config-functions.md` section 3.1), so a destination
filter copied from Segment works unchanged, plus two functions Segment lacks, ``exists(path)``
and ``regex(value, pattern)``:

    type = "track" and event = "Order Completed"
    properties.revenue >= 100 and !contains(context.page.url, "staging")
    match(context.traits.email, "*@example.com") or userId in ["u1", "u2"]
    length(userId) > 0 and typeof(properties.items) = "list"

- **Paths** name event fields as Segment spells them (``type``, ``event``, ``name``,
  ``userId``, ``anonymousId``, ``messageId``, ``groupId``, ``previousId``, ``properties.<...>``,
  ``traits.<...>``, ``context.<...>``, ``integrations.<...>``, ``timestamp``, ``receivedAt``,
  ``sentAt``, ``originalTimestamp``, and top-level keys a client added). A missing field is
  ``null``. Characters outside ``a-zA-Z0-9_-`` in a path segment are escaped with ``\\``.
- **Literals**: ``'...'`` or ``"..."`` strings, numbers, ``true``, ``false``, ``null``, lists
  ``['a', 'b']``.
- **Operators**: ``and``, ``or``, unary ``!``, parentheses; ``=``/``!=`` are strict (a number
  never equals a string); ``> >= < <=`` compare numbers only (anything else is false);
  ``x in [list]`` and ``'a' in properties.features``.
- **Functions**: ``contains(s, sub)``, ``match(s, glob)`` (whole string, case-sensitive; ``*``,
  ``?``, ``[abc]``, ``[a-z]``, ``\\x``), ``length(list|string|object)`` (bytes for strings),
  ``lowercase``, ``uppercase``, ``snakecase``, ``kebabcase``, ``titlecase``, ``typeof(v)``
  (``"string"``, ``"number"``, ``"bool"``, ``"list"``, ``"object"``, ``"null"``), ``bool``,
  ``string``, ``number``, ``exists(v)`` (not null), ``regex(s, pattern)`` (Python ``re``
  search; the pattern must be a literal, compiled once). Functions of ``null`` give
  ``contains``/``match``/``regex`` false, ``length`` 0, the case functions ``null``.
- **Fail closed**: a condition is true only when it evaluates to exactly ``true``; anything else
  (a number, a string, ``null``) is false. ``"all"`` alone means always true.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from signalsmith.model import EventBase

Evaluator = Callable[[Any], Any]

# Most characters a condition may have, and most nesting: conditions come from configuration,
# but a bounded parser costs nothing and cannot be made to recurse without end.
MAX_LENGTH = 10_000
MAX_DEPTH = 64


class FqlError(ValueError):
    """A condition that does not parse; the message says where and what was expected."""


class Condition:
    """A parsed condition: ``condition(event)`` is True or False, never raises.

    ``paths`` lists the event fields it reads, each as its segments (``("context", "ip")``), in
    the order written, so configuration can check them (a template naming an unknown field).
    """

    __slots__ = ("_evaluate", "paths", "source")

    def __init__(
        self, source: str, evaluate: Evaluator, paths: tuple[tuple[str, ...], ...] = ()
    ) -> None:
        self.source = source
        self._evaluate = evaluate
        self.paths = paths

    def __call__(self, event: Any) -> bool:
        try:
            return self._evaluate(event) is True
        except Exception:  # a value no function expected: the condition does not hold
            return False

    def value(self, event: Any) -> Any:
        """The expression's value (not only whether it holds), for `fql` expressions in
        mappings; None when it cannot be computed."""
        try:
            return self._evaluate(event)
        except Exception:
            return None

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def parse(source: str) -> Condition:
    """Parse ``source`` once; raises ``FqlError`` naming the position of the problem."""
    if not isinstance(source, str):
        raise FqlError(f"a condition must be text, got {type(source).__name__}")
    if len(source) > MAX_LENGTH:
        raise FqlError(
            f"a condition is at most {MAX_LENGTH} characters; this one has {len(source)}"
        )
    if source.strip() == "all":
        return Condition(source, lambda event: True)
    parser = _Parser(source)
    evaluate = parser.expression()
    parser.expect_end()
    return Condition(source, evaluate, tuple(parser.paths))


# --- reading event fields ---------------------------------------------------------------------

# Segment's top-level names, as attributes of the event model.
_ATTRIBUTES = {
    "type": "type",
    "event": "event",
    "name": "name",
    "category": "category",
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "messageId": "message_id",
    "groupId": "group_id",
    "previousId": "previous_id",
    "properties": "properties",
    "traits": "traits",
    "context": "context",
    "integrations": "integrations",
    "timestamp": "timestamp",
    "receivedAt": "received_at",
    "sentAt": "sent_at",
    "originalTimestamp": "original_timestamp",
    "projectId": "project_id",
}
_MISSING = object()


def _top(event: Any, name: str) -> Any:
    if isinstance(event, EventBase):
        attribute = _ATTRIBUTES.get(name)
        value = getattr(event, attribute, None) if attribute is not None else _MISSING
        if value is _MISSING:
            value = event.extra.get(name)
        return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value
    if isinstance(event, dict):
        return event.get(name)
    return None


def _path_reader(segments: tuple[str, ...]) -> Evaluator:
    first, rest = segments[0], segments[1:]
    if not rest:
        return lambda event: _top(event, first)

    def read(event: Any) -> Any:
        value = _top(event, first)
        for segment in rest:
            if isinstance(value, dict):
                value = value.get(segment)
            elif isinstance(value, list) and segment.isdigit():
                index = int(segment)
                value = value[index] if index < len(value) else None
            else:
                return None
        return value

    return read


# --- values and functions -----------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(left: Any, right: Any) -> bool:
    """FQL's strict equality: the types must match (numbers compare as numbers)."""
    if _is_number(left) and _is_number(right):
        return left == right
    if type(left) is not type(right):
        return False
    return left == right


def _compare(operator: str) -> Callable[[Any, Any], bool]:
    def compare(left: Any, right: Any) -> bool:
        if not (_is_number(left) and _is_number(right)):
            return False
        if operator == ">":
            return left > right
        if operator == ">=":
            return left >= right
        if operator == "<":
            return left < right
        return left <= right

    return compare


def _within(item: Any, collection: Any) -> bool:
    if isinstance(collection, list):
        return any(_equal(item, element) for element in collection)
    return False


def _contains(value: Any, part: Any) -> bool:
    if isinstance(value, str) and isinstance(part, str):
        return part in value
    if isinstance(value, list):
        return _within(part, value)
    return False


def _glob(pattern: str) -> re.Pattern[str]:
    """FQL's glob as a regular expression: ``*``, ``?``, ``[...]`` and ``\\x`` literals."""
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            out.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            end = pattern.find("]", index + 1)
            if end < 0:
                out.append(re.escape(char))
            else:
                body = pattern[index + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out), re.DOTALL)


def _length(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list | dict):
        return len(value)
    return 0


_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def _words(value: str) -> list[str]:
    return _WORDS.findall(value)


def _text_function(convert: Callable[[str], str]) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        return convert(value) if isinstance(value, str) else value

    return apply


def _typeof(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _to_string(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 3.0 -> "3", as JavaScript writes it
    if _is_number(value):
        return repr(value)
    return msgspec.json.encode(value).decode()


def _to_number(value: Any) -> float | int | None:
    if _is_number(value):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        return int(number) if number.is_integer() and "." not in value else number
    return None


# Function name -> (argument count, implementation). match and regex are built at parse time.
_FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {
    "contains": (2, _contains),
    "length": (1, _length),
    "lowercase": (1, _text_function(str.lower)),
    "uppercase": (1, _text_function(str.upper)),
    "snakecase": (1, _text_function(lambda s: "_".join(w.lower() for w in _words(s)))),
    "kebabcase": (1, _text_function(lambda s: "-".join(w.lower() for w in _words(s)))),
    "titlecase": (1, _text_function(lambda s: " ".join(w.capitalize() for w in _words(s)))),
    "typeof": (1, _typeof),
    "bool": (1, _to_bool),
    "string": (1, _to_string),
    "number": (1, _to_number),
    "exists": (1, lambda value: value is not None),
}
_PATTERN_FUNCTIONS = ("match", "regex")


# --- the parser -----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<operator>!=|>=|<=|=|>|<|!)
  | (?P<punct>[()\[\],])
  | (?P<word>(?:[A-Za-z0-9_\-$]|\\.)+(?:\.(?:[A-Za-z0-9_\-$]|\\.)+)*)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "in", "true", "false", "null"}


class _Token:
    __slots__ = ("kind", "position", "text")

    def __init__(self, kind: str, text: str, position: int) -> None:
        self.kind = kind
        self.text = text
        self.position = position


def _tokens(source: str) -> list[_Token]:
    found: list[_Token] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None:
            raise FqlError(f"unexpected {source[position]!r} at position {position + 1}")
        kind = match.lastgroup or ""
        if kind != "space":
            found.append(_Token(kind, match.group(), position))
        position = match.end()
    return found


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body, flags=re.DOTALL)


def split_path(text: str) -> tuple[str, ...]:
    """A dotted path as its segments; ``\\`` escapes a character (``properties.a\\.b``)."""
    segments, current, index = [], [], 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index + 1])
            index += 2
            continue
        if char == ".":
            segments.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    segments.append("".join(current))
    return tuple(segments)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokens(source)
        self.index = 0
        self.depth = 0
        self.paths: list[tuple[str, ...]] = []

    # -- token helpers --

    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _where(self, token: _Token | None) -> str:
        if token is None:
            return "at the end"
        return f"at position {token.position + 1} ({token.text!r})"

    def _next(self) -> _Token:
        token = self._peek()
        if token is None:
            raise FqlError(f"the condition ends too early: {self.source!r}")
        self.index += 1
        return token

    def _accept(self, *texts: str) -> _Token | None:
        token = self._peek()
        if (
            token is not None
            and token.kind in ("operator", "punct", "word")
            and (token.text in texts)
        ):
            self.index += 1
            return token
        return None

    def _expect(self, text: str) -> None:
        token = self._peek()
        if self._accept(text) is None:
            raise FqlError(f"expected {text!r} {self._where(token)}")

    def expect_end(self) -> None:
        token = self._peek()
        if token is not None:
            raise FqlError(f"unexpected {token.text!r} at position {token.position + 1}")

    # -- grammar --

    def _deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FqlError(f"a condition nests at most {MAX_DEPTH} levels")

    def expression(self) -> Evaluator:
        self._deeper()
        evaluate = self._or()
        self.depth -= 1
        return evaluate

    def _or(self) -> Evaluator:
        parts = [self._and()]
        while self._accept("or"):
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda event: any(part(event) is True for part in parts)

    def _and(self) -> Evaluator:
        parts = [self._not()]
        while self._accept("and"):
            parts.append(self._not())
        if len(parts) == 1:
            return parts[0]
        return lambda event: all(part(event) is True for part in parts)

    def _not(self) -> Evaluator:
        if self._accept("!"):
            self._deeper()
            inner = self._not()
            self.depth -= 1
            return lambda event: inner(event) is not True
        return self._comparison()

    def _comparison(self) -> Evaluator:
        left = self._value()
        token = self._peek()
        if token is None:
            return left
        if token.kind == "operator" and token.text in ("=", "!=", ">", ">=", "<", "<="):
            self.index += 1
            right = self._value()
            if token.text == "=":
                return lambda event: _equal(left(event), right(event))
            if token.text == "!=":
                return lambda event: not _equal(left(event), right(event))
            compare = _compare(token.text)
            return lambda event: compare(left(event), right(event))
        if self._accept("in"):
            right = self._value()
            return lambda event: _within(left(event), right(event))
        return left

    def _value(self) -> Evaluator:
        token = self._next()
        if token.kind == "number":
            number = float(token.text)
            literal: Any = int(number) if re.fullmatch(r"-?\d+", token.text) else number
            return lambda event: literal
        if token.kind == "string":
            text = _unquote(token.text)
            return lambda event: text
        if token.kind == "punct" and token.text == "(":
            inner = self.expression()
            self._expect(")")
            return inner
        if token.kind == "punct" and token.text == "[":
            return self._list()
        if token.kind == "word":
            if token.text == "true":
                return lambda event: True
            if token.text == "false":
                return lambda event: False
            if token.text == "null":
                return lambda event: None
            if token.text in _KEYWORDS:
                raise FqlError(f"expected a value {self._where(token)}")
            following = self._peek()
            if following is not None and following.kind == "punct" and following.text == "(":
                return self._call(token)
            segments = split_path(token.text)
            self.paths.append(segments)
            return _path_reader(segments)
        raise FqlError(f"expected a value {self._where(token)}")

    def _list(self) -> Evaluator:
        items: list[Evaluator] = []
        if not self._accept("]"):
            while True:
                items.append(self._value())
                if self._accept("]"):
                    break
                self._expect(",")
        return lambda event: [item(event) for item in items]

    def _call(self, name_token: _Token) -> Evaluator:
        name = name_token.text
        self._expect("(")
        arguments: list[Evaluator] = []
        literal_tokens: list[_Token | None] = []
        if not self._accept(")"):
            while True:
                start = self.index
                arguments.append(self.expression())
                # A pattern argument must be one literal string: compiled here, once.
                literal_tokens.append(self.tokens[start] if self.index - start == 1 else None)
                if self._accept(")"):
                    break
                self._expect(",")
        if name in _PATTERN_FUNCTIONS:
            return self._pattern_call(name_token, arguments, literal_tokens)
        known = _FUNCTIONS.get(name)
        if known is None:
            raise FqlError(
                f"unknown function {name!r} at position {name_token.position + 1}; functions: "
                f"{', '.join(sorted([*_FUNCTIONS, *_PATTERN_FUNCTIONS]))}"
            )
        count, function = known
        if len(arguments) != count:
            raise FqlError(
                f"{name}() takes {count} argument{'s' if count > 1 else ''}, got "
                f"{len(arguments)} at position {name_token.position + 1}"
            )
        if count == 1:
            [only] = arguments
            return lambda event: function(only(event))
        first, second = arguments
        return lambda event: function(first(event), second(event))

    def _pattern_call(
        self, name_token: _Token, arguments: list[Evaluator], literal_tokens: list[_Token | None]
    ) -> Evaluator:
        name = name_token.text
        if len(arguments) != 2:
            raise FqlError(
                f"{name}() takes 2 arguments, got {len(arguments)} at position "
                f"{name_token.position + 1}"
            )
        pattern_token = literal_tokens[1]
        if pattern_token is None or pattern_token.kind != "string":
            raise FqlError(
                f"{name}()'s pattern must be a quoted string at position {name_token.position + 1}"
            )
        pattern = _unquote(pattern_token.text)
        if name == "match":
            compiled = _glob(pattern)
            search = compiled.fullmatch
        else:
            try:
                compiled = re.compile(pattern)
            except re.error as error:
                raise FqlError(f"regex() pattern {pattern!r} does not compile: {error}") from None
            search = compiled.search
        value = arguments[0]

        def matches(event: Any) -> bool:
            text = value(event)
            return isinstance(text, str) and search(text) is not None

        return matches
