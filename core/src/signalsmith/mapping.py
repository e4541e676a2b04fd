"""Mappings: Segment's Actions mapping-kit, compiled once per workspace version.

A mapping turns an event (as Segment spells it: ``type``, ``userId``, ``properties``, ...) into
the payload a destination sends. It is JSON made of raw values, kept as written, and
**directives**: an object with exactly one ``@``-key (never beside ordinary keys) that reads or
reshapes the event (`shared/reference/plans-config-functions.md` section 4):

    {"order_id": {"@path": "$.properties.order_id"},
     "email": {"@case": {"operator": "lower", "value": {"@path": "$.context.traits.email"}}},
     "currency": {"@if": {"exists": {"@path": "$.properties.currency"},
                          "then": {"@path": "$.properties.currency"}, "else": "USD"}}}

A directive that finds nothing resolves to *undefined*, and an undefined value is left out of
the object (or list) holding it; an explicit ``null`` is kept. So a mapping that reads a field
an event lacks drops that field (or uses its ``@if`` default) and never fails the event.

Directives: ``@path``, ``@template``, ``@literal``, ``@if``, ``@arrayPath``, ``@case``,
``@replace``, ``@merge``, ``@transform``, ``@flatten``, ``@json``, ``@excludeWhenNull`` and
``@liquid`` (output tags ``{{ value | filter: arg }}`` only; see ``LIQUID_FILTERS``).
``compile_mapping`` checks a mapping whole, raising ``MappingInvalid`` with every problem and
its path, and returns a ``Mapping``: a tree of closures that is cheap to call per event.

``EventMapping`` is what a destination instance uses: its type's default mapping per message
type, the instance's overrides, and triggered mappings (Segment's subscriptions: an FQL
``trigger`` and a mapping, the first that matches wins).
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable, Iterable
from collections.abc import Mapping as MappingABC
from typing import Any, NamedTuple

import msgspec

from signalsmith.fql import Condition, FqlError
from signalsmith.fql import parse as parse_condition
from signalsmith.model import EVENT_TYPES, EventBase, to_segment_dict


class _Undefined:
    """JavaScript's ``undefined``: what a directive that found nothing resolves to."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Any = _Undefined()

Path = tuple[str | int, ...]
Resolver = Callable[[Any], Any]

DIRECTIVE_NAME = re.compile(r"^@[a-z][a-zA-Z0-9]+$")
# mapping-kit's own bounds: short literal patterns for @replace, short @liquid templates.
MAX_REPLACE_PATTERN = 10
MAX_LIQUID_LENGTH = 1000
MAX_DEPTH = 64


class MappingProblem(NamedTuple):
    """One thing wrong with a mapping: where (from the mapping's root) and what."""

    path: Path
    message: str


class MappingInvalid(ValueError):
    """A mapping that does not compile, with every problem found in it."""

    def __init__(self, problems: list[MappingProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{_render(p.path) or '(root)'}: {p.message}" for p in problems))

    def prefixed(self, *prefix: str | int) -> MappingInvalid:
        return MappingInvalid(
            [MappingProblem((*prefix, *p.path), p.message) for p in self.problems]
        )


def _render(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class Mapping:
    """A compiled mapping: ``mapping(payload)`` is the resolved value (``UNDEFINED`` when it
    resolved to nothing). ``whole_event`` is True for ``{"@path": "$."}``, the event itself."""

    __slots__ = ("_resolve", "source", "whole_event")

    def __init__(self, source: Any, resolve: Resolver, whole_event: bool = False) -> None:
        self.source = source
        self._resolve = resolve
        self.whole_event = whole_event

    def __call__(self, payload: Any) -> Any:
        return self._resolve(payload)

    def __repr__(self) -> str:
        return f"Mapping({self.source!r})"


def compile_mapping(value: Any) -> Mapping:
    """Check ``value`` whole and compile it; raises ``MappingInvalid`` with every problem."""
    compiler = _Compiler()
    resolve = compiler.compile(value, ())
    if compiler.problems:
        raise MappingInvalid(compiler.problems)
    whole = isinstance(value, dict) and value.get("@path") in ("$.", "$", "") and len(value) == 1
    return Mapping(value, resolve, whole)


# --- reading paths ------------------------------------------------------------------------------

_PATH_PART = re.compile(r"""\[(\d+)\]|\[(["'])((?:(?!\2).)*)\2\]|([^.\[\]]+)|(\.)""")


def parse_path(path: str) -> tuple[str | int, ...]:
    """``$.properties.products[0].sku`` -> ``("properties", "products", 0, "sku")``; ``$.``,
    ``$`` and ``""`` are the whole payload. Raises ValueError for a malformed path."""
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
        if text.startswith("."):
            text = text[1:]
    parts: list[str | int] = []
    position = 0
    expect_part = True
    while position < len(text):
        match = _PATH_PART.match(text, position)
        if match is None:
            raise ValueError(f"cannot read the path {path!r} at {text[position:]!r}")
        index, _, quoted, name, dot = match.groups()
        if dot is not None:
            if expect_part:
                raise ValueError(f"empty segment in the path {path!r}")
            expect_part = True
        elif index is not None:
            parts.append(int(index))
            expect_part = False
        elif quoted is not None:
            parts.append(quoted)
            expect_part = False
        else:
            if not expect_part:
                raise ValueError(f"a segment of {path!r} follows another without a '.'")
            parts.append(name)
            expect_part = False
        position = match.end()
    if parts and expect_part:
        raise ValueError(f"the path {path!r} ends with '.'")
    return tuple(parts)


def read_path(value: Any, parts: tuple[str | int, ...]) -> Any:
    """The value at ``parts`` inside ``value``, or ``UNDEFINED``."""
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, UNDEFINED) if isinstance(part, str) else UNDEFINED
        elif isinstance(value, list):
            # `products.0.sku` reads an index as `products[0].sku` does (lodash's get).
            index = part if isinstance(part, int) else int(part) if part.isdigit() else None
            value = value[index] if index is not None and index < len(value) else UNDEFINED
        else:
            return UNDEFINED
        if value is UNDEFINED:
            return UNDEFINED
    return value


def _path_reader(parts: tuple[str | int, ...]) -> Resolver:
    if not parts:
        return lambda payload: payload
    if len(parts) == 1 and isinstance(parts[0], str):
        key = parts[0]
        return lambda payload: (
            payload.get(key, UNDEFINED) if isinstance(payload, dict) else UNDEFINED
        )
    return lambda payload: read_path(payload, parts)


# --- values ---------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def js_string(value: Any) -> str:
    """``value`` as JavaScript's ``String()`` writes it (objects as JSON), for templates."""
    if value is None or value is UNDEFINED:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and math.isfinite(value):
            return str(int(value))
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return msgspec.json.encode(value).decode()


def _cleaned(value: Any) -> Any:
    """``value`` without undefined members, recursively (mapping-kit's removeUndefined)."""
    if isinstance(value, dict):
        return {k: _cleaned(v) for k, v in value.items() if v is not UNDEFINED}
    if isinstance(value, list):
        return [_cleaned(v) for v in value if v is not UNDEFINED]
    return value


def _constant(value: Any) -> Resolver:
    return lambda payload: value


# --- the compiler ---------------------------------------------------------------------------------


class _Compiler:
    def __init__(self) -> None:
        self.problems: list[MappingProblem] = []
        self.depth = 0

    def problem(self, path: Path, message: str) -> Resolver:
        self.problems.append(MappingProblem(path, message))
        return _constant(UNDEFINED)

    def compile(self, value: Any, path: Path) -> Resolver:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                return self.problem(path, f"a mapping nests at most {MAX_DEPTH} levels")
            return self._compile(value, path)
        finally:
            self.depth -= 1

    def _compile(self, value: Any, path: Path) -> Resolver:
        if isinstance(value, list):
            items = [self.compile(item, (*path, index)) for index, item in enumerate(value)]
            return lambda payload: [
                resolved
                for resolved in (item(payload) for item in items)
                if resolved is not UNDEFINED
            ]
        if isinstance(value, dict):
            directives = [key for key in value if isinstance(key, str) and key.startswith("@")]
            if directives:
                return self.directive(value, directives, path)
            fields = [(key, self.compile(item, (*path, key))) for key, item in value.items()]
            return lambda payload: {
                key: resolved
                for key, resolved in ((key, field(payload)) for key, field in fields)
                if resolved is not UNDEFINED
            }
        if value is None or isinstance(value, str | int | float | bool):
            return _constant(value)
        return self.problem(path, f"a mapping holds JSON values, not {type(value).__name__}")

    def directive(self, value: dict[str, Any], directives: list[str], path: Path) -> Resolver:
        if len(value) != 1:
            others = [key for key in value if key != directives[0]]
            if len(directives) > 1:
                return self.problem(
                    path,
                    f"an object holds one directive, found {len(directives)}: "
                    f"{', '.join(directives)}; put each under a key of its own",
                )
            return self.problem(
                path,
                f"a directive object ({directives[0]}) cannot have other keys "
                f"({', '.join(map(str, others))}); move them beside it in the parent object",
            )
        name = directives[0]
        build = _DIRECTIVES.get(name)
        if build is None:
            return self.problem(
                path,
                f"unknown directive {name}; directives: {', '.join(sorted(_DIRECTIVES))}",
            )
        return build(self, value[name], (*path, name))

    # -- argument helpers --

    def options(
        self,
        value: Any,
        path: Path,
        name: str,
        required: Iterable[str],
        optional: Iterable[str] = (),
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(path, f"{name} takes an object, got {_kind(value)}")
            return None
        required = tuple(required)
        allowed = {*required, *optional}
        unknown = [key for key in value if key not in allowed]
        missing = [key for key in required if key not in value]
        if unknown:
            self.problem(
                path,
                f"{name} does not take {', '.join(map(repr, unknown))} (it takes "
                f"{', '.join(sorted(allowed))})",
            )
        if missing:
            self.problem(path, f"{name} needs {', '.join(map(repr, missing))}")
        return None if unknown or missing else value

    def text(self, value: Any, path: Path, name: str) -> str | None:
        if not isinstance(value, str):
            self.problem(path, f"{name} takes a string, got {_kind(value)}")
            return None
        return value

    def flag(self, options: dict[str, Any], key: str, path: Path, default: bool) -> bool:
        value = options.get(key, default)
        if not isinstance(value, bool):
            self.problem((*path, key), f"expected true or false, got {_kind(value)}")
            return default
        return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _string_argument(
    compiler: _Compiler, value: Any, path: Path, name: str, build: Callable[[str], Resolver]
) -> Resolver:
    """A directive whose argument is a string, written out or produced by a directive."""
    if isinstance(value, str):
        return build(value)
    if isinstance(value, dict):
        inner = compiler.compile(value, path)
        cache: dict[str, Resolver] = {}

        def dynamic(payload: Any) -> Any:
            text = inner(payload)
            if not isinstance(text, str):
                return UNDEFINED
            resolver = cache.get(text)
            if resolver is None:
                try:
                    resolver = build(text)
                except ValueError:
                    return UNDEFINED
                if len(cache) < 256:
                    cache[text] = resolver
            return resolver(payload)

        return dynamic
    return compiler.problem(path, f"{name} takes a string, got {_kind(value)}")


# --- the directives -------------------------------------------------------------------------------


def _path(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    def build(text: str) -> Resolver:
        return _path_reader(parse_path(text))

    if isinstance(value, str):
        try:
            return build(value)
        except ValueError as error:
            return compiler.problem(path, str(error))
    return _string_argument(compiler, value, path, "@path", build)


_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def _template_renderer(template: str) -> Resolver:
    pieces: list[str | tuple[str | int, ...]] = []
    last = 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append(template[last : match.start()])
        pieces.append(parse_path(match.group(1)))
        last = match.end()
    pieces.append(template[last:])
    if len(pieces) == 1:
        return _constant(template)

    def render(payload: Any) -> str:
        return "".join(
            piece if isinstance(piece, str) else js_string(read_path(payload, piece))
            for piece in pieces
        )

    return render


def _template(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    if isinstance(value, str):
        try:
            return _template_renderer(value)
        except ValueError as error:
            return compiler.problem(path, str(error))
    return _string_argument(compiler, value, path, "@template", _template_renderer)


def _literal(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    frozen = msgspec.json.decode(msgspec.json.encode(value))  # a private copy, never shared
    return lambda payload: _copy(frozen)


def _copy(value: Any) -> Any:
    if isinstance(value, dict | list):
        return msgspec.json.decode(msgspec.json.encode(value))
    return value


def _if(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    options = compiler.options(value, path, "@if", (), ("exists", "blank", "then", "else"))
    if options is None:
        return _constant(UNDEFINED)
    conditions = [key for key in ("exists", "blank") if key in options]
    if len(conditions) != 1:
        return compiler.problem(
            path, '@if needs one condition: "exists" (not null) or "blank" (also not empty)'
        )
    if "then" not in options and "else" not in options:
        return compiler.problem(path, '@if needs a "then" or an "else" branch')
    kind = conditions[0]
    tested = compiler.compile(options[kind], (*path, kind))
    then = compiler.compile(options["then"], (*path, "then")) if "then" in options else None
    otherwise = compiler.compile(options["else"], (*path, "else")) if "else" in options else None

    def holds(payload: Any) -> bool:
        found = tested(payload)
        if found is UNDEFINED or found is None:
            return False
        # "blank" also counts what JavaScript's loose `!= ''` does: "", 0 and false.
        return not (kind == "blank" and (found == "" or found is False or found == 0))

    def resolve(payload: Any) -> Any:
        branch = then if holds(payload) else otherwise
        return UNDEFINED if branch is None else branch(payload)

    return resolve


def _array_path(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    if not isinstance(value, list) or not 1 <= len(value) <= 2:
        return compiler.problem(path, "@arrayPath takes [path, item shape]")
    where = value[0]
    if isinstance(where, str):
        try:
            root = _path_reader(parse_path(where))
        except ValueError as error:
            return compiler.problem((*path, 0), str(error))
    elif isinstance(where, dict):
        root = compiler.compile(where, (*path, 0))
    else:
        return compiler.problem((*path, 0), f"@arrayPath's path is a string, got {_kind(where)}")
    shape = value[1] if len(value) == 2 else None
    if shape is not None and not isinstance(shape, dict):
        return compiler.problem(
            (*path, 1), f"@arrayPath's item shape is an object, got {_kind(shape)}"
        )
    if not shape:
        return root
    item = compiler.compile(shape, (*path, 1))

    def resolve(payload: Any) -> Any:
        found = root(payload)
        if isinstance(found, dict):
            found = [found]
        if not isinstance(found, list):
            return found
        return [
            resolved
            for resolved in (item(element) for element in found)
            if resolved is not UNDEFINED
        ]

    return resolve


def _case(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    options = compiler.options(value, path, "@case", ("operator", "value"))
    if options is None:
        return _constant(UNDEFINED)
    operator = options["operator"]
    if operator not in ("lower", "upper"):
        return compiler.problem(
            (*path, "operator"), f'expected "lower" or "upper", got {operator!r}'
        )
    inner = compiler.compile(options["value"], (*path, "value"))
    convert = str.lower if operator == "lower" else str.upper

    def resolve(payload: Any) -> Any:
        found = inner(payload)
        return convert(found) if isinstance(found, str) else found

    return resolve


def _replace(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    options = compiler.options(
        value,
        path,
        "@replace",
        ("value", "pattern"),
        ("replacement", "ignorecase", "global", "pattern2", "replacement2"),
    )
    if options is None:
        return _constant(UNDEFINED)
    flags = re.IGNORECASE if compiler.flag(options, "ignorecase", path, False) else 0
    every = compiler.flag(options, "global", path, True)
    steps: list[tuple[re.Pattern[str], str]] = []
    for pattern_key, replacement_key in (("pattern", "replacement"), ("pattern2", "replacement2")):
        if pattern_key not in options:
            if replacement_key in options:
                compiler.problem((*path, replacement_key), f"{replacement_key} needs {pattern_key}")
            continue
        pattern = compiler.text(options[pattern_key], (*path, pattern_key), pattern_key)
        replacement = compiler.text(
            options.get(replacement_key, ""), (*path, replacement_key), replacement_key
        )
        if pattern is None or replacement is None:
            continue
        for key, text in ((pattern_key, pattern), (replacement_key, replacement)):
            if len(text) > MAX_REPLACE_PATTERN:
                compiler.problem(
                    (*path, key), f"at most {MAX_REPLACE_PATTERN} characters, got {len(text)}"
                )
        if not pattern:
            compiler.problem((*path, pattern_key), "the pattern is empty")
            continue
        steps.append((re.compile(re.escape(pattern), flags), replacement))
    inner = compiler.compile(options["value"], (*path, "value"))
    count = 0 if every else 1

    def resolve(payload: Any) -> Any:
        found = inner(payload)
        if isinstance(found, bool) or _is_number(found):
            found = js_string(found)
        if not isinstance(found, str):
            return found
        for pattern, replacement in steps:
            found = pattern.sub(lambda _m, r=replacement: r, found, count=count)
        return found

    return resolve


def _merge(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    options = compiler.options(value, path, "@merge", ("objects",), ("direction",))
    if options is None:
        return _constant(UNDEFINED)
    objects = options["objects"]
    if not isinstance(objects, list) or not objects:
        return compiler.problem((*path, "objects"), "expected a list of objects to merge")
    direction = options.get("direction", "right")
    if direction not in ("left", "right"):
        return compiler.problem(
            (*path, "direction"), f'expected "left" or "right", got {direction!r}'
        )
    parts = [compiler.compile(item, (*path, "objects", i)) for i, item in enumerate(objects)]
    if direction == "left":  # earlier objects win: merge from the last one to the first
        parts.reverse()

    def resolve(payload: Any) -> Any:
        merged: dict[str, Any] = {}
        for part in parts:
            found = part(payload)
            if isinstance(found, dict):
                merged.update(found)
        return merged

    return resolve


def _transform(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    options = compiler.options(value, path, "@transform", ("apply", "mapping"))
    if options is None:
        return _constant(UNDEFINED)
    first = compiler.compile(options["apply"], (*path, "apply"))
    then = compiler.compile(options["mapping"], (*path, "mapping"))

    def resolve(payload: Any) -> Any:
        intermediate = first(payload)
        return then(_cleaned(intermediate) if intermediate is not UNDEFINED else {})

    return resolve


def _flatten(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    options = compiler.options(value, path, "@flatten", ("value",), ("separator", "omitArrays"))
    if options is None:
        return _constant(UNDEFINED)
    separator = compiler.text(options.get("separator", "."), (*path, "separator"), "separator")
    omit_arrays = compiler.flag(options, "omitArrays", path, False)
    inner = compiler.compile(options["value"], (*path, "value"))
    joiner = separator if separator is not None else "."

    def flatten(found: Any, prefix: str, out: dict[str, Any]) -> None:
        if isinstance(found, dict) or (isinstance(found, list) and not omit_arrays):
            items = found.items() if isinstance(found, dict) else enumerate(found)
            empty = True
            for key, item in items:
                empty = False
                flatten(item, f"{prefix}{joiner}{key}" if prefix else str(key), out)
            if empty and prefix:
                out[prefix] = found
            return
        out[prefix] = found

    def resolve(payload: Any) -> Any:
        found = inner(payload)
        if not isinstance(found, dict):
            return found
        out: dict[str, Any] = {}
        flatten(found, "", out)
        return out

    return resolve


def _json(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    options = compiler.options(value, path, "@json", ("mode", "value"))
    if options is None:
        return _constant(UNDEFINED)
    mode = options["mode"]
    if mode not in ("encode", "decode"):
        return compiler.problem((*path, "mode"), f'expected "encode" or "decode", got {mode!r}')
    inner = compiler.compile(options["value"], (*path, "value"))

    def encode(payload: Any) -> Any:
        found = inner(payload)
        if found is UNDEFINED:
            return UNDEFINED
        try:
            return msgspec.json.encode(_cleaned(found)).decode()
        except (TypeError, msgspec.EncodeError):
            return UNDEFINED

    def decode(payload: Any) -> Any:
        found = inner(payload)
        if not isinstance(found, str):
            return found
        try:
            return msgspec.json.decode(found)
        except msgspec.DecodeError:
            return found  # mapping-kit's rule: a bad decode gives the input back

    return encode if mode == "encode" else decode


def _exclude_when_null(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    inner = compiler.compile(value, path)

    def resolve(payload: Any) -> Any:
        found = inner(payload)
        return UNDEFINED if found is None else found

    return resolve


# --- @liquid: output tags and the common filters ----------------------------------------------


def _number(value: Any) -> float | int | None:
    if _is_number(value):
        return value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return int(number) if number.is_integer() and "." not in value else number
    return None


def _arithmetic(operation: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def apply(value: Any, other: Any = None) -> Any:
        left, right = _number(value), _number(other)
        if left is None or right is None:
            return value
        try:
            return operation(left, right)
        except (ZeroDivisionError, OverflowError):
            return value

    return apply


def _truncate(value: Any, length: Any = 50, ellipsis: Any = "...") -> Any:
    text = js_string(value)
    size = _number(length)
    if size is None:
        return text
    size = int(size)
    marker = js_string(ellipsis)
    if len(text) <= size:
        return text
    return text[: max(0, size - len(marker))] + marker


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | dict) else 0


LIQUID_FILTERS: dict[str, Callable[..., Any]] = {
    "upcase": lambda v: v.upper() if isinstance(v, str) else v,
    "downcase": lambda v: v.lower() if isinstance(v, str) else v,
    "capitalize": lambda v: v[:1].upper() + v[1:] if isinstance(v, str) else v,
    "strip": lambda v: v.strip() if isinstance(v, str) else v,
    "lstrip": lambda v: v.lstrip() if isinstance(v, str) else v,
    "rstrip": lambda v: v.rstrip() if isinstance(v, str) else v,
    "default": lambda v, d=None: (
        d if v is None or v is UNDEFINED or v is False or v in ("", []) else v
    ),
    "size": _size,
    "append": lambda v, s="": js_string(v) + js_string(s),
    "prepend": lambda v, s="": js_string(s) + js_string(v),
    "replace": lambda v, a="", b="": js_string(v).replace(js_string(a), js_string(b)),
    "replace_first": lambda v, a="", b="": js_string(v).replace(js_string(a), js_string(b), 1),
    "remove": lambda v, a="": js_string(v).replace(js_string(a), ""),
    "truncate": _truncate,
    "split": lambda v, s=" ": (
        js_string(v).split(js_string(s)) if js_string(s) else list(js_string(v))
    ),
    "join": lambda v, s=" ": (
        js_string(s).join(js_string(i) for i in v) if isinstance(v, list) else v
    ),
    "first": lambda v: v[0] if isinstance(v, list | str) and v else None,
    "last": lambda v: v[-1] if isinstance(v, list | str) and v else None,
    "plus": _arithmetic(lambda a, b: a + b),
    "minus": _arithmetic(lambda a, b: a - b),
    "times": _arithmetic(lambda a, b: a * b),
    "divided_by": _arithmetic(
        lambda a, b: a // b if isinstance(a, int) and isinstance(b, int) else a / b
    ),
    "modulo": _arithmetic(lambda a, b: a % b),
    "round": lambda v, n=0: round(v, int(n)) if _is_number(v) and _is_number(n) else v,
    "abs": lambda v: abs(v) if _is_number(v) else v,
    "url_encode": lambda v: urllib.parse.quote_plus(js_string(v)),
    "escape": lambda v: (
        js_string(v)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    ),
}
_LIQUID_TOKEN = re.compile(
    r"""\s*(?:(?P<string>"[^"]*"|'[^']*')|(?P<number>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_$][\w.\[\]"'$-]*))\s*"""
)


def _liquid_operand(text: str) -> Resolver:
    match = _LIQUID_TOKEN.fullmatch(text)
    if match is None:
        raise ValueError(f"cannot read {text.strip()!r}")
    if match.group("string") is not None:
        return _constant(match.group("string")[1:-1])
    if match.group("number") is not None:
        number = float(match.group("number"))
        return _constant(int(number) if number.is_integer() and "." not in text else number)
    word = match.group("word")
    if word in ("true", "false", "nil", "null"):
        return _constant({"true": True, "false": False}.get(word))
    parts = parse_path(word)
    return lambda payload: read_path(payload, parts)


def _liquid_output(expression: str) -> Resolver:
    first, *filters = [part.strip() for part in expression.split("|")]
    value = _liquid_operand(first)
    steps: list[tuple[Callable[..., Any], list[Resolver]]] = []
    for text in filters:
        name, _, raw_arguments = text.partition(":")
        name = name.strip()
        function = LIQUID_FILTERS.get(name)
        if function is None:
            raise ValueError(
                f"unknown filter {name!r} (filters: {', '.join(sorted(LIQUID_FILTERS))})"
            )
        arguments = (
            [_liquid_operand(a) for a in raw_arguments.split(",")] if raw_arguments.strip() else []
        )
        steps.append((function, arguments))

    def render(payload: Any) -> Any:
        found = value(payload)
        for function, arguments in steps:
            found = function(found, *(argument(payload) for argument in arguments))
        return found

    return render


def _liquid(compiler: _Compiler, value: Any, path: Path) -> Resolver:
    template = compiler.text(value, path, "@liquid")
    if template is None:
        return _constant(UNDEFINED)
    if len(template) > MAX_LIQUID_LENGTH:
        return compiler.problem(
            path, f"at most {MAX_LIQUID_LENGTH} characters, got {len(template)}"
        )
    if "{%" in template:
        return compiler.problem(
            path, "only output tags {{ ... }} are supported here; tags {% ... %} are not"
        )
    pieces: list[str | Resolver] = []
    last = 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append(template[last : match.start()])
        try:
            pieces.append(_liquid_output(match.group(1)))
        except ValueError as error:
            return compiler.problem(path, f"{{{{ {match.group(1)} }}}}: {error}")
        last = match.end()
    pieces.append(template[last:])

    def render(payload: Any) -> str:
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            found = piece(payload)
            out.append(
                "".join(map(js_string, found)) if isinstance(found, list) else js_string(found)
            )
        return "".join(out)

    return render


_DIRECTIVES: dict[str, Callable[[_Compiler, Any, Path], Resolver]] = {
    "@path": _path,
    "@template": _template,
    "@literal": _literal,
    "@if": _if,
    "@arrayPath": _array_path,
    "@case": _case,
    "@replace": _replace,
    "@merge": _merge,
    "@transform": _transform,
    "@flatten": _flatten,
    "@json": _json,
    "@excludeWhenNull": _exclude_when_null,
    "@liquid": _liquid,
}
DIRECTIVES = tuple(sorted(_DIRECTIVES))

# --- a destination instance's mappings ----------------------------------------------------------

WHOLE_EVENT: dict[str, Any] = {"@path": "$."}


class TriggeredMapping(NamedTuple):
    """A mapping for the events its FQL ``trigger`` matches (Segment's subscription)."""

    name: str
    trigger: Condition
    mapping: Mapping


class EventMapping:
    """Which mapping an event gets, and the payload it makes (module docstring).

    ``payload(event)`` never raises for a missing field; it returns ``UNDEFINED`` only when the
    mapping resolved to nothing at all.
    """

    __slots__ = ("by_type", "triggered")

    def __init__(self, by_type: dict[str, Mapping], triggered: tuple[TriggeredMapping, ...] = ()):
        self.by_type = by_type
        self.triggered = triggered

    def mapping_for(self, event: EventBase) -> Mapping:
        for candidate in self.triggered:
            if candidate.trigger(event):
                return candidate.mapping
        mapping = self.by_type.get(event.type)
        return mapping if mapping is not None else _WHOLE

    def payload(self, event: EventBase) -> Any:
        mapping = self.mapping_for(event)
        whole = to_segment_dict(event)
        # Objects and lists the mapping builds already leave undefined members out.
        return whole if mapping.whole_event else mapping(whole)


_WHOLE = compile_mapping(WHOLE_EVENT)


def check_default_mappings(mappings: MappingABC[str, Any]) -> None:
    """Raise ``MappingInvalid`` if a destination type's defaults are not one mapping per known
    message type."""
    problems = [
        MappingProblem((kind,), f"not a message type (one of {', '.join(EVENT_TYPES)})")
        for kind in mappings
        if kind not in EVENT_TYPES
    ]
    if problems:
        raise MappingInvalid(problems)
    for kind, value in mappings.items():
        try:
            compile_mapping(value)
        except MappingInvalid as error:
            raise error.prefixed(kind) from None


def build_event_mapping(
    defaults: MappingABC[str, Any],
    overrides: MappingABC[str, Any] | None = None,
    triggered: Iterable[tuple[str, str, Any]] = (),
) -> EventMapping:
    """A destination instance's ``EventMapping``: its type's ``defaults`` by message type, the
    instance's ``overrides`` by message type, and its ``triggered`` mappings as ``(name,
    trigger, mapping)``. Raises ``MappingInvalid`` with paths ``mapping.<type>...`` and
    ``mappings[i]...``."""
    problems: list[MappingProblem] = []
    by_type: dict[str, Mapping] = {}
    for kind in EVENT_TYPES:
        written = (overrides or {}).get(kind, defaults.get(kind))
        if written is None:
            continue
        try:
            by_type[kind] = compile_mapping(written)
        except MappingInvalid as error:
            where = ("mapping", kind) if overrides and kind in overrides else ("defaults", kind)
            problems += error.prefixed(*where).problems
    compiled: list[TriggeredMapping] = []
    for index, (name, trigger, written) in enumerate(triggered):
        try:
            condition = parse_condition(trigger)
        except FqlError as error:
            problems.append(MappingProblem(("mappings", index, "trigger"), str(error)))
            condition = None
        try:
            mapping = compile_mapping(written)
        except MappingInvalid as error:
            problems += error.prefixed("mappings", index, "mapping").problems
            continue
        if condition is not None:
            compiled.append(TriggeredMapping(name, condition, mapping))
    if problems:
        raise MappingInvalid(problems)
    return EventMapping(by_type, tuple(compiled))


__all__ = [
    "DIRECTIVES",
    "LIQUID_FILTERS",
    "UNDEFINED",
    "WHOLE_EVENT",
    "EventMapping",
    "Mapping",
    "MappingInvalid",
    "MappingProblem",
    "TriggeredMapping",
    "build_event_mapping",
    "check_default_mappings",
    "compile_mapping",
    "js_string",
    "parse_path",
    "read_path",
]
