"""JSON Schema (draft-07, as tracking plans write it) compiled once into jsonschema-rs validators.

bench/contracts_validate.py compared the candidates on a plan of 50 events of 10 properties:
jsonschema-rs checks a valid event in about 1 µs and lists every violation (which omitting the
offending properties needs); fastjsonschema and msgspec types stop at the first error, and this
plugin's own compiled Python checks (its first version) took 10 µs. So a schema is compiled into
a jsonschema-rs validator when a workspace version is built; ``is_valid`` answers for the usual
valid event, and only an invalid one pays for the list of its errors.

Costs stay bounded whatever an event holds: the validator is Rust; patterns must be regular
expressions RE2 compiles (what Segment accepts: no look-around, no back-references), which the
Rust regex engine runs in linear time; at most ``MAX_PROBLEMS`` problems are listed per value.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any, NamedTuple

import jsonschema_rs
import msgspec
import re2

Path = tuple[str | int, ...]

# Most problems listed for one value (an array of 10,000 wrong items is one story, not 10,000).
MAX_PROBLEMS = 50
# Longest text of a value quoted in a violation.
QUOTED_CHARS = 120


class Problem(NamedTuple):
    """One failure of a value against a schema: where, which keyword, what was wanted and given."""

    path: Path
    rule: str
    expected: str
    actual: str
    message: str


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


# --- validators ------------------------------------------------------------------------------------


def check_pattern(written: Any, where: Path) -> None:
    """Refuse a pattern RE2 does not compile (look-around, back-references), naming the fix."""
    if not isinstance(written, str):
        raise SchemaError(where, f"pattern must be a string, got {quoted(written)}")
    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(written, options)
    except re2.error as error:
        reason = str(error).removeprefix("b'").removesuffix("'")
        raise SchemaError(
            where,
            f"pattern {written!r} does not compile: {reason} (patterns are RE2 regular "
            "expressions, as in Segment: no look-around or back-references; for 'must not "
            "match' use `not: {pattern: ...}`)",
        ) from None


def _check_patterns(schema: Any, where: Path) -> None:
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            _check_patterns(item, (*where, index))
        return
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key == "pattern" and isinstance(value, str):
            check_pattern(value, (*where, key))
        elif key == "patternProperties" and isinstance(value, dict):
            for pattern, sub in value.items():
                check_pattern(pattern, (*where, key, pattern))
                _check_patterns(sub, (*where, key, pattern))
        elif key in ("enum", "const", "default", "examples"):
            continue  # values, not schemas
        else:
            _check_patterns(value, (*where, key))


class Validator:
    """One schema, compiled: ``is_valid(value)``, and ``problems(value, path)`` when it is not."""

    __slots__ = ("is_valid", "schema", "validator")

    def __init__(self, schema: Any, where: Path = ()) -> None:
        _check_patterns(schema, where)
        try:
            self.validator = jsonschema_rs.validator_for(schema, validate_formats=True)
        except (jsonschema_rs.ValidationError, ValueError) as error:
            message = str(error).split("\n", 1)[0]
            raise SchemaError(where, f"not valid JSON Schema: {message}") from None
        self.schema = schema
        self.is_valid: Callable[[Any], bool] = self.validator.is_valid

    def problems(self, value: Any, path: Path) -> list[Problem]:
        found: list[Problem] = []
        for error in islice(self.validator.iter_errors(value), MAX_PROBLEMS):
            found += _problems_of(error, path, self.schema)
        return found


def _problems_of(error: Any, path: Path, schema: Any) -> list[Problem]:
    rule = str(error.schema_path[-1]) if error.schema_path else "schema"
    at: Path = (*path, *error.instance_path)
    kind = error.kind
    if rule == "required":
        name = str(kind.property)
        return [Problem((*at, name), "required", "present", "missing", f"{name} is required")]
    if rule == "additionalProperties" and hasattr(kind, "unexpected"):
        return [
            Problem(
                (*at, str(name)),
                "additionalProperties",
                "not present (not in the plan)",
                "present",
                f"Additional property {name} is not allowed",
            )
            for name in kind.unexpected
        ]
    expected = _at(schema, error.schema_path)
    message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    if rule == "type":
        message = f"Invalid type. Expected: {_types(expected)}, given: {json_type(error.instance)}"
    wanted = _types(expected) if rule == "type" else quoted(expected)
    return [Problem(at, rule, wanted, quoted(error.instance), message)]


def _at(schema: Any, schema_path: Any) -> Any:
    for part in schema_path:
        if isinstance(schema, dict) and part in schema:
            schema = schema[part]
        elif isinstance(schema, list) and isinstance(part, int) and part < len(schema):
            schema = schema[part]
        else:
            return None
    return schema


def _types(expected: Any) -> str:
    if isinstance(expected, list):
        return ", ".join(str(item) for item in expected)
    return str(expected)


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
