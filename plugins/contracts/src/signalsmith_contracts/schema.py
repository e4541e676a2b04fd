"""JSON Schema (draft-07, as tracking plans write it) compiled into plain Python checks.

A schema is compiled once, when a workspace version is built, into nested closures; checking a
value is then a few ``type()`` tests and dict lookups per planned property, with no interpretation
of the schema on the request path (bench/contracts_validate.py compares this with jsonschema-rs,
fastjsonschema and msgspec types: it is the fastest on valid events and the only one that lists
every violation, which omitting the offending properties needs).

A check appends a ``Problem`` per failure to a list and returns nothing; the path of a value is
built only when it fails or is descended into. Costs are bounded whatever the event holds:
patterns run on RE2 (linear time, the regular expressions Segment accepts: no look-around, no
back-references), at most ``MAX_ITEMS`` items of an array and ``MAX_DEPTH`` levels are looked at,
and ``uniqueItems`` hashes each item once.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
import re2
from re2 import _re2

Path = tuple[str | int, ...]

# Deepest a check descends (only a recursive `$ref` can go this deep), and most items of one
# array it looks at: beyond them an event gets a violation saying so, not an unbounded walk.
MAX_DEPTH = 32
MAX_ITEMS = 10_000
# Longest text of a value quoted in a violation.
QUOTED_CHARS = 120

# Keywords that only annotate (and the ones whose subschemas are reached through others).
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "labels",
        "readOnly",
        "writeOnly",
        "definitions",
        "$defs",
        "eventMetadata",
        "contentMediaType",
        "contentEncoding",
    }
)
JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")


class Problem(NamedTuple):
    """One failure of a value against a schema: where, which keyword, what was wanted and given."""

    path: Path
    rule: str
    expected: str
    actual: str
    message: str


Check = Callable[[Any, Path, list[Problem]], None]


class SchemaError(Exception):
    """A schema that cannot be compiled; ``path`` is where in the schema."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


# --- describing values ---------------------------------------------------------------------------


def json_type(value: Any) -> str:
    """The JSON type name of ``value`` (``integer`` for whole numbers)."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def quoted(value: Any) -> str:
    """``value`` as short JSON text, for violations and the warehouse."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(value)
    return text if len(text) <= QUOTED_CHARS else text[: QUOTED_CHARS - 3] + "..."


def _problem(path: Path, rule: str, expected: str, value: Any, message: str) -> Problem:
    return Problem(path, rule, expected, quoted(value), message)


# --- types -----------------------------------------------------------------------------------------


def _is_integer(value: Any) -> bool:
    cls = value.__class__
    return cls is int or (cls is float and value.is_integer())


# The Python classes a value of each JSON type has (integer also takes whole floats).
_TYPE_CLASSES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _type_check(types: list[str]) -> Check:
    classes = frozenset(cls for name in types for cls in _TYPE_CLASSES[name])
    floats_as_integers = "integer" in types and "number" not in types
    expected = ", ".join(types)

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        cls = value.__class__
        if cls in classes or (floats_as_integers and cls is float and value.is_integer()):
            return
        out.append(
            _problem(
                path,
                "type",
                expected,
                value,
                f"Invalid type. Expected: {expected}, given: {json_type(value)}",
            )
        )

    return check


# --- formats ---------------------------------------------------------------------------------------

_DATE = r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
_TIME = r"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)"
_FORMAT_PATTERNS = {
    "date-time": re.compile(rf"{_DATE}[Tt ]{_TIME}"),
    "date": re.compile(_DATE),
    "time": re.compile(_TIME),
    "email": re.compile(r"[^@\s]+@[^@\s]+"),
    "uuid": re.compile(
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    ),
    "hostname": re.compile(
        r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
    ),
    "uri": re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]*"),
}


def _is_ip(version: int) -> Callable[[str], bool]:
    def test(text: str) -> bool:
        try:
            return ipaddress.ip_address(text).version == version
        except ValueError:
            return False

    return test


def _matches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda text: pattern.fullmatch(text) is not None


_FORMAT_TESTS: dict[str, Callable[[str], bool]] = {
    **{name: _matches(pattern) for name, pattern in _FORMAT_PATTERNS.items()},
    "ipv4": _is_ip(4),
    "ipv6": _is_ip(6),
}
# Longest string a format is tested on; longer is not a date, an email or an address.
_FORMAT_MAX_CHARS = 2048


# --- the compiler ----------------------------------------------------------------------------------


class _Compiler:
    def __init__(self, root: Any) -> None:
        self.root = root
        # Compiled `$ref` targets by pointer; a recursive reference finds its own entry.
        self.refs: dict[str, Check] = {}

    def compile(self, schema: Any, where: Path) -> Check | None:
        """The check for ``schema`` at ``where``; None when it accepts everything."""
        if schema is True or schema == {}:
            return None
        if schema is False:
            return _never
        if not isinstance(schema, dict):
            raise SchemaError(
                where, f"a schema must be an object or a boolean, got {quoted(schema)}"
            )
        if "$ref" in schema:
            # Draft-07: a `$ref` replaces its siblings.
            return self.ref(schema["$ref"], (*where, "$ref"))
        checks: list[Check] = []
        types = self.types(schema, where)
        if types is not None:
            checks.append(_type_check(types))
        for keyword, build in _KEYWORDS:
            if keyword in schema:
                check = build(self, schema, where)
                if check is not None:
                    checks.append(check)
        unknown = [
            key
            for key in schema
            if key not in _KNOWN and key not in _ANNOTATIONS and not key.startswith("x-")
        ]
        for key in unknown:
            # Unknown keywords annotate in JSON Schema; one that looks like a misspelt keyword
            # would silently check nothing, so those are refused.
            close = _CLOSE.get(key.lower())
            if close is not None:
                raise SchemaError(
                    (*where, key), f"unknown keyword {key!r}; did you mean {close!r}?"
                )
        return _all_of(checks)

    def types(self, schema: dict[str, Any], where: Path) -> list[str] | None:
        if "type" not in schema:
            return None
        written = schema["type"]
        types = [written] if isinstance(written, str) else written
        if (
            not isinstance(types, list)
            or not types
            or any(not isinstance(t, str) or (t not in JSON_TYPES and t != "any") for t in types)
        ):
            raise SchemaError(
                (*where, "type"),
                f"type must be one of {', '.join(JSON_TYPES)} or a list of them, got "
                f"{quoted(written)}",
            )
        if "any" in types:
            return None
        return list(dict.fromkeys(types))

    def ref(self, pointer: Any, where: Path) -> Check:
        if not isinstance(pointer, str) or not pointer.startswith("#"):
            raise SchemaError(
                where,
                f"only references inside the plan are supported (#/definitions/...), got "
                f"{quoted(pointer)}",
            )
        if pointer in self.refs:
            return self.refs[pointer]
        target = self.root
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/") if p]
        for part in parts:
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise SchemaError(where, f"reference {pointer!r} points at nothing in the schema")
        compiled: list[Check | None] = [None]

        def check(value: Any, path: Path, out: list[Problem]) -> None:
            inner = compiled[0]
            if inner is not None:
                inner(value, path, out)

        self.refs[pointer] = check
        compiled[0] = self.compile(target, (*where, pointer))
        return check


def _never(value: Any, path: Path, out: list[Problem]) -> None:
    out.append(_problem(path, "false", "nothing", value, "No value is allowed here"))


def _all_of(checks: list[Check]) -> Check | None:
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks

        def both(value: Any, path: Path, out: list[Problem]) -> None:
            first(value, path, out)
            second(value, path, out)

        return both
    listed = tuple(checks)

    def every(value: Any, path: Path, out: list[Problem]) -> None:
        for check in listed:
            check(value, path, out)

    return every


def _number(schema: dict[str, Any], keyword: str, where: Path) -> float:
    value = schema[keyword]
    if value.__class__ not in (int, float) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise SchemaError((*where, keyword), f"{keyword} must be a number, got {quoted(value)}")
    return value


def _count(schema: dict[str, Any], keyword: str, where: Path) -> int:
    value = schema[keyword]
    if not _is_integer(value) or value < 0:
        raise SchemaError(
            (*where, keyword), f"{keyword} must be a non-negative integer, got {quoted(value)}"
        )
    return int(value)


def _enum(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
    allowed = schema["enum"]
    if not isinstance(allowed, list) or not allowed:
        raise SchemaError((*where, "enum"), "enum must be a non-empty list of values")
    expected = ", ".join(quoted(item) for item in allowed)
    hashable = {_key(item) for item in allowed}

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if _key(value) not in hashable:
            out.append(
                _problem(
                    path,
                    "enum",
                    expected,
                    value,
                    f"{_name(path)} must be one of the following: {expected}",
                )
            )

    return check


def _const(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
    wanted = _key(schema["const"])
    expected = quoted(schema["const"])

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if _key(value) != wanted:
            out.append(
                _problem(
                    path, "const", expected, value, f"{_name(path)} does not match: {expected}"
                )
            )

    return check


def _key(value: Any) -> Any:
    """A hashable stand-in for a JSON value, equal for equal values (1 == 1.0, true != 1)."""
    cls = value.__class__
    if cls is bool:
        return ("b", value)
    if cls is float and value.is_integer():
        return int(value)
    if cls is dict or cls is list:
        return ("j", msgspec.json.encode(value, order="sorted"))
    return value


def _pattern(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
    written = schema["pattern"]
    match = compile_pattern(written, (*where, "pattern"))

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is str and not match(value):
            out.append(
                _problem(path, "pattern", written, value, f"Does not match pattern '{written}'")
            )

    return check


_UNANCHORED = _re2.RE2.Anchor.UNANCHORED


def compile_pattern(written: Any, where: Path) -> Callable[[str], bool]:
    """``written`` as RE2 compiles it (what Segment accepts); the returned test searches a string.

    The RE2 object is called directly: the module's ``search`` builds match objects in Python
    and costs ten times as much (5 µs against 0.5 µs).
    """
    if not isinstance(written, str):
        raise SchemaError(where, f"pattern must be a string, got {quoted(written)}")
    options = re2.Options()
    options.log_errors = False
    try:
        compiled = re2.compile(written, options)
    except re2.error as error:
        reason = str(error).removeprefix("b'").removesuffix("'")
        raise SchemaError(
            where,
            f"pattern {written!r} does not compile: {reason} (patterns are RE2 regular "
            "expressions, as in Segment: no look-around or back-references; for 'must not "
            "match' use `not: {pattern: ...}`)",
        ) from None
    regexp = compiled._regexp

    def search(text: str) -> bool:
        encoded = text.encode("utf-8", "surrogatepass")
        return regexp.Match(_UNANCHORED, encoded, 0, len(encoded))[0][0] != -1

    return search


def _format(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    name = schema["format"]
    test = _FORMAT_TESTS.get(name) if isinstance(name, str) else None
    if test is None:
        return None  # formats are annotations unless known (JSON Schema's rule)

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is str and (len(value) > _FORMAT_MAX_CHARS or not test(value)):
            out.append(_problem(path, "format", name, value, f"Does not match format '{name}'"))

    return check


def _string_length(keyword: str) -> Callable[[_Compiler, dict[str, Any], Path], Check]:
    def build(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
        limit = _count(schema, keyword, where)
        at_least = keyword == "minLength"
        words = "greater" if at_least else "less"

        def check(value: Any, path: Path, out: list[Problem]) -> None:
            if value.__class__ is str and (len(value) < limit if at_least else len(value) > limit):
                out.append(
                    _problem(
                        path,
                        keyword,
                        f"{'>=' if at_least else '<='} {limit} characters",
                        value,
                        f"String length must be {words} than or equal to {limit}",
                    )
                )

        return check

    return build


def _bound(keyword: str) -> Callable[[_Compiler, dict[str, Any], Path], Check | None]:
    def build(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
        if keyword in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(
            schema[keyword], bool
        ):
            return None  # draft-04's boolean form: read with minimum/maximum
        limit = _number(schema, keyword, where)
        exclusive = (
            keyword.startswith("exclusive")
            or schema.get("exclusiveMinimum" if keyword == "minimum" else "exclusiveMaximum")
            is True
        )
        lower = keyword in ("minimum", "exclusiveMinimum")
        sign = (">" if lower else "<") + ("" if exclusive else "=")
        words = ("greater" if lower else "less") + ("" if exclusive else " than or equal to")
        if exclusive:
            words = "greater than" if lower else "less than"

        def check(value: Any, path: Path, out: list[Problem]) -> None:
            cls = value.__class__
            if cls is not int and cls is not float:
                return
            if lower:
                bad = value <= limit if exclusive else value < limit
            else:
                bad = value >= limit if exclusive else value > limit
            if bad:
                out.append(
                    _problem(
                        path,
                        keyword,
                        f"{sign} {quoted(limit)}",
                        value,
                        f"Must be {words} {quoted(limit)}",
                    )
                )

        return check

    return build


def _multiple_of(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
    divisor = _number(schema, "multipleOf", where)
    if divisor <= 0:
        raise SchemaError((*where, "multipleOf"), "multipleOf must be greater than 0")

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        cls = value.__class__
        if cls is not int and cls is not float:
            return
        quotient = value / divisor
        if not (math.isfinite(quotient) and abs(quotient - round(quotient)) < 1e-9):
            out.append(
                _problem(
                    path,
                    "multipleOf",
                    f"a multiple of {quoted(divisor)}",
                    value,
                    f"Must be a multiple of {quoted(divisor)}",
                )
            )

    return check


def _properties(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    written = schema["properties"]
    if not isinstance(written, dict):
        raise SchemaError((*where, "properties"), "properties must be an object of schemas")
    listed: list[tuple[str, Check]] = []
    for name, sub in written.items():
        check = compiler.compile(sub, (*where, "properties", name))
        if check is not None:
            listed.append((name, check))
    if not listed:
        return None
    items = tuple(listed)

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is not dict:
            return
        if len(path) >= MAX_DEPTH:
            out.append(_too_deep(path, value))
            return
        get = value.get
        for name, sub in items:
            found = get(name, _ABSENT)
            if found is not _ABSENT:
                sub(found, (*path, name), out)

    return check


_ABSENT = object()


def _too_deep(path: Path, value: Any) -> Problem:
    return Problem(
        path,
        "maxDepth",
        f"at most {MAX_DEPTH} levels",
        "deeper",
        f"Nested deeper than {MAX_DEPTH} levels; not checked further",
    )


def _required(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    names = schema["required"]
    if not isinstance(names, list) or any(not isinstance(name, str) for name in names):
        raise SchemaError((*where, "required"), "required must be a list of property names")
    if not names:
        return None
    listed = tuple(dict.fromkeys(names))

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is not dict:
            return
        for name in listed:
            if name not in value:
                out.append(
                    Problem((*path, name), "required", "present", "missing", f"{name} is required")
                )

    return check


def _additional_properties(
    compiler: _Compiler, schema: dict[str, Any], where: Path
) -> Check | None:
    extra = schema["additionalProperties"]
    declared = frozenset(schema.get("properties") or ())
    patterns = [
        compile_pattern(pattern, (*where, "patternProperties", pattern))
        for pattern in (schema.get("patternProperties") or {})
    ]
    if extra is True or extra == {}:
        return None
    sub = None if extra is False else compiler.compile(extra, (*where, "additionalProperties"))

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is not dict:
            return
        for name, item in value.items():
            if name in declared or any(match(name) for match in patterns):
                continue
            if sub is None:
                out.append(
                    Problem(
                        (*path, name),
                        "additionalProperties",
                        "not present (not in the plan)",
                        quoted(item),
                        f"Additional property {name} is not allowed",
                    )
                )
            else:
                sub(item, (*path, name), out)

    return check


def _pattern_properties(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    written = schema["patternProperties"]
    if not isinstance(written, dict):
        raise SchemaError((*where, "patternProperties"), "patternProperties must be an object")
    listed = []
    for pattern, sub in written.items():
        match = compile_pattern(pattern, (*where, "patternProperties", pattern))
        check = compiler.compile(sub, (*where, "patternProperties", pattern))
        if check is not None:
            listed.append((match, check))
    if not listed:
        return None

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is not dict:
            return
        for name, item in value.items():
            for match, sub in listed:
                if match(name):
                    sub(item, (*path, name), out)

    return check


def _property_count(keyword: str) -> Callable[[_Compiler, dict[str, Any], Path], Check]:
    def build(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
        limit = _count(schema, keyword, where)
        at_least = keyword == "minProperties"

        def check(value: Any, path: Path, out: list[Problem]) -> None:
            if value.__class__ is dict and (len(value) < limit if at_least else len(value) > limit):
                out.append(
                    Problem(
                        path,
                        keyword,
                        f"{'>=' if at_least else '<='} {limit} properties",
                        f"{len(value)} properties",
                        f"Must have {'at least' if at_least else 'at most'} {limit} properties",
                    )
                )

        return check

    return build


def _items(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    written = schema["items"]
    if isinstance(written, list):  # a tuple: one schema per position
        positional = [compiler.compile(sub, (*where, "items", i)) for i, sub in enumerate(written)]
        extra = schema.get("additionalItems", True)
        rest = None if extra is True else compiler.compile(extra, (*where, "additionalItems"))

        def check_tuple(value: Any, path: Path, out: list[Problem]) -> None:
            if value.__class__ is not list:
                return
            for index, item in enumerate(value[:MAX_ITEMS]):
                sub = positional[index] if index < len(positional) else rest
                if sub is not None:
                    sub(item, (*path, index), out)
            if len(value) > MAX_ITEMS:
                out.append(_too_many(path, value))

        return check_tuple
    sub = compiler.compile(written, (*where, "items"))
    if sub is None:
        return None

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is not list:
            return
        if len(path) >= MAX_DEPTH:
            out.append(_too_deep(path, value))
            return
        for index, item in enumerate(value[:MAX_ITEMS]):
            sub(item, (*path, index), out)
        if len(value) > MAX_ITEMS:
            out.append(_too_many(path, value))

    return check


def _too_many(path: Path, value: list[Any]) -> Problem:
    return Problem(
        path,
        "maxItems",
        f"at most {MAX_ITEMS} items checked",
        f"{len(value)} items",
        f"Array has {len(value)} items; only the first {MAX_ITEMS} can be checked",
    )


def _item_count(keyword: str) -> Callable[[_Compiler, dict[str, Any], Path], Check]:
    def build(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
        limit = _count(schema, keyword, where)
        at_least = keyword == "minItems"

        def check(value: Any, path: Path, out: list[Problem]) -> None:
            if value.__class__ is list and (len(value) < limit if at_least else len(value) > limit):
                out.append(
                    Problem(
                        path,
                        keyword,
                        f"{'>=' if at_least else '<='} {limit} items",
                        f"{len(value)} items",
                        f"Array must have {'at least' if at_least else 'at most'} {limit} items",
                    )
                )

        return check

    return build


def _unique_items(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    if schema["uniqueItems"] is not True:
        return None

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is not list:
            return
        seen: dict[Any, int] = {}
        for index, item in enumerate(value[:MAX_ITEMS]):
            key = _key(item)
            if key in seen:
                out.append(
                    Problem(
                        path,
                        "uniqueItems",
                        "unique items",
                        f"items {seen[key]} and {index} are equal",
                        f"array items[{seen[key]},{index}] must be unique",
                    )
                )
                return
            seen[key] = index

    return check


def _contains(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
    sub = compiler.compile(schema["contains"], (*where, "contains")) or (lambda v, p, o: None)

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is not list:
            return
        for item in value[:MAX_ITEMS]:
            found: list[Problem] = []
            sub(item, path, found)
            if not found:
                return
        out.append(
            Problem(
                path, "contains", "an item matching", "none", "At least one of the items must match"
            )
        )

    return check


def _subschemas(
    compiler: _Compiler, schema: dict[str, Any], where: Path, keyword: str
) -> list[Check]:
    written = schema[keyword]
    if not isinstance(written, list) or not written:
        raise SchemaError((*where, keyword), f"{keyword} must be a non-empty list of schemas")
    return [
        compiler.compile(sub, (*where, keyword, i)) or (lambda v, p, o: None)
        for i, sub in enumerate(written)
    ]


def _all_of_keyword(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    return _all_of(_subschemas(compiler, schema, where, "allOf"))


def _any_of(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
    options = _subschemas(compiler, schema, where, "anyOf")

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        for option in options:
            found: list[Problem] = []
            option(value, path, found)
            if not found:
                return
        out.append(
            _problem(
                path,
                "anyOf",
                "one of the listed schemas",
                value,
                "Must validate at least one schema (anyOf)",
            )
        )

    return check


def _one_of(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
    options = _subschemas(compiler, schema, where, "oneOf")

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        passed = 0
        for option in options:
            found: list[Problem] = []
            option(value, path, found)
            passed += not found
        if passed != 1:
            out.append(
                _problem(
                    path,
                    "oneOf",
                    "exactly one of the listed schemas",
                    value,
                    "Must validate one and only one schema (oneOf)",
                )
            )

    return check


def _not(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check:
    sub = compiler.compile(schema["not"], (*where, "not")) or (lambda v, p, o: None)

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        found: list[Problem] = []
        sub(value, path, found)
        if not found:
            out.append(
                _problem(
                    path,
                    "not",
                    "not the schema in `not`",
                    value,
                    "Must not validate the schema (not)",
                )
            )

    return check


def _if(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    condition = compiler.compile(schema["if"], (*where, "if")) or (lambda v, p, o: None)
    then = compiler.compile(schema["then"], (*where, "then")) if "then" in schema else None
    otherwise = compiler.compile(schema["else"], (*where, "else")) if "else" in schema else None
    if then is None and otherwise is None:
        return None

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        found: list[Problem] = []
        condition(value, path, found)
        branch = then if not found else otherwise
        if branch is not None:
            branch(value, path, out)

    return check


def _dependencies(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    written = schema["dependencies"]
    if not isinstance(written, dict):
        raise SchemaError((*where, "dependencies"), "dependencies must be an object")
    listed: list[tuple[str, Any]] = []
    for name, dependency in written.items():
        if isinstance(dependency, list):
            listed.append((name, tuple(dependency)))
        else:
            listed.append((name, compiler.compile(dependency, (*where, "dependencies", name))))

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is not dict:
            return
        for name, dependency in listed:
            if name not in value or dependency is None:
                continue
            if isinstance(dependency, tuple):
                for needed in dependency:
                    if needed not in value:
                        out.append(
                            Problem(
                                (*path, needed),
                                "dependencies",
                                "present",
                                "missing",
                                f"Has a dependency on {needed}",
                            )
                        )
            else:
                dependency(value, path, out)

    return check


def _property_names(compiler: _Compiler, schema: dict[str, Any], where: Path) -> Check | None:
    sub = compiler.compile(schema["propertyNames"], (*where, "propertyNames"))
    if sub is None:
        return None

    def check(value: Any, path: Path, out: list[Problem]) -> None:
        if value.__class__ is not dict:
            return
        for name in value:
            sub(name, (*path, name), out)

    return check


_KEYWORDS: tuple[tuple[str, Callable[[_Compiler, dict[str, Any], Path], Check | None]], ...] = (
    ("enum", _enum),
    ("const", _const),
    ("pattern", _pattern),
    ("format", _format),
    ("minLength", _string_length("minLength")),
    ("maxLength", _string_length("maxLength")),
    ("minimum", _bound("minimum")),
    ("maximum", _bound("maximum")),
    ("exclusiveMinimum", _bound("exclusiveMinimum")),
    ("exclusiveMaximum", _bound("exclusiveMaximum")),
    ("multipleOf", _multiple_of),
    ("required", _required),
    ("properties", _properties),
    ("patternProperties", _pattern_properties),
    ("additionalProperties", _additional_properties),
    ("minProperties", _property_count("minProperties")),
    ("maxProperties", _property_count("maxProperties")),
    ("dependencies", _dependencies),
    ("propertyNames", _property_names),
    ("items", _items),
    ("minItems", _item_count("minItems")),
    ("maxItems", _item_count("maxItems")),
    ("uniqueItems", _unique_items),
    ("contains", _contains),
    ("allOf", _all_of_keyword),
    ("anyOf", _any_of),
    ("oneOf", _one_of),
    ("not", _not),
    ("if", _if),
)
_KNOWN = frozenset(
    {keyword for keyword, _ in _KEYWORDS} | {"type", "$ref", "then", "else", "additionalItems"}
)
# Misspellings of keywords (lower-cased) that would otherwise check nothing.
_CLOSE = {keyword.lower(): keyword for keyword in _KNOWN if keyword.lower() != keyword} | {
    "require": "required",
    "property": "properties",
    "enums": "enum",
    "types": "type",
}


def compile_schema(schema: Any, where: Path = ()) -> Check | None:
    """``schema`` compiled into a check (None when it accepts everything).

    Raises ``SchemaError`` with the path inside the schema for anything it cannot check.
    """
    return _Compiler(schema).compile(schema, where)


def render_path(path: Path) -> str:
    """``("properties", "items", 0, "sku")`` as ``properties.items[0].sku``; ``(root)`` when empty."""
    if not path:
        return "(root)"
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _name(path: Path) -> str:
    for part in reversed(path):
        if isinstance(part, str):
            return part
    return "(root)"
