"""Checking a written value against a type (a plugin's settings Struct, or the core's), collecting
every problem rather than stopping at the first.

msgspec stops at the first error of a ``convert``; for a Struct this module checks each field on
its own, so a document with three wrong settings gets three errors. Unknown settings are refused
even when the Struct would ignore them: a misspelt setting must not be silently dropped. A
setting typed ``Secret`` must be written as a ``${ENV_NAME}`` placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from signalsmith.records import SettingsError
from signalsmith.workspace.placeholders import holds_placeholder
from signalsmith.workspace.text import Path, describe

# `Expected `int`, got `str` - at `$.a[0].b``
_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<where>[^`]*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_GOT_TYPE = re.compile(r", got `[^`]+`$")

Report = Callable[[Path, str], None]


def _msgspec_path(where: str | None) -> tuple[Path, bool]:
    """msgspec's ``.a[0].b`` as a path; the flag says it was cut at an unnamed dict key."""
    path: list[str | int] = []
    for step in _STEP.finditer(where or ""):
        name, index = step.group(1), step.group(2)
        if name is not None:
            path.append(name)
        elif index is not None:
            path.append(int(index))
        else:
            return tuple(path), True
    return tuple(path), False


def _value_at(value: Any, path: Path) -> tuple[bool, Any]:
    for part in path:
        if isinstance(part, int) and isinstance(value, list) and 0 <= part < len(value):
            value = value[part]
        elif isinstance(part, str) and isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return False, None
    return True, value


def _expected(annotation: Any) -> str | None:
    """The plain-words expectation a type declares (``Meta(extra={"expected": ...})``)."""
    try:
        info = msgspec.inspect.type_info(annotation)
    except (TypeError, ValueError):
        return None
    if isinstance(info, msgspec.inspect.Metadata) and info.extra:
        expected = info.extra.get("expected")
        return expected if isinstance(expected, str) else None
    return None


def explain(error: msgspec.ValidationError, written: Any, annotation: Any) -> tuple[Path, str]:
    """The path inside ``written`` that ``error`` is about, and a sentence saying what is wrong
    with the value written there (``expected an http(s) URL, got "htp:/x"``)."""
    match = _AT.match(str(error))
    assert match is not None
    reason = match.group("reason")
    path, cut = _msgspec_path(match.group("where"))
    cause = error.__cause__
    if isinstance(cause, SettingsError):  # a plugin's own check, from a Struct's __post_init__
        return (*path, *cause.path), cause.message
    found, value = _value_at(written, path) if not cut else (False, None)
    expected = _expected(annotation) if not path else None
    if expected is not None:
        reason = f"expected {expected}"
    else:
        reason = reason[:1].lower() + reason[1:]
    if found and not isinstance(value, dict | list):
        reason = _GOT_TYPE.sub("", reason) + f", got {describe(value)}"
    if cut:
        reason += " (in one of the mapping's values)"
    return path, reason


def check_value(value: Any, annotation: Any, path: Path, report: Report, *, what: str) -> Any:
    """``value`` converted to ``annotation``, or None after reporting every problem found.

    ``what`` names the thing in messages ("transform type 'rename'"). A Struct is checked
    field by field; anything else in one ``convert``.
    """
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return _check_struct(value, annotation, path, report, what=what)
    try:
        converted = msgspec.convert(value, annotation, strict=True)
    except msgspec.ValidationError as error:
        where, reason = explain(error, value, annotation)
        report((*path, *where), reason)
        return None
    if _misplaced_secrets(value, annotation, path, report):
        return None
    return converted


def _check_struct(
    value: Any, struct: type[msgspec.Struct], path: Path, report: Report, *, what: str
) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        report(path, f"expected a mapping of settings for {what}, got {describe(value)}")
        return None
    fields = msgspec.structs.fields(struct)
    by_name = {field.encode_name: field for field in fields}
    good = True
    for key in value:
        if key not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            report((*path, key), f"unknown setting {key!r} for {what} (its settings: {known})")
            good = False
    for field in fields:
        name = field.encode_name
        if name not in value:
            if field.required:
                report(path, f"missing required setting {name!r} for {what}")
                good = False
            continue
        try:
            msgspec.convert(value[name], field.type, strict=True)
        except msgspec.ValidationError as error:
            where, reason = explain(error, value[name], field.type)
            report((*path, name, *where), reason)
            good = False
            continue
        if _misplaced_secrets(value[name], field.type, (*path, name), report):
            good = False
    if not good:
        return None
    try:
        return msgspec.convert(value, struct, strict=True)
    except (msgspec.ValidationError, ValueError, TypeError) as error:
        # A Struct's own __post_init__ checks (rules across fields).
        if isinstance(error, msgspec.ValidationError) and isinstance(
            error.__cause__, SettingsError
        ):
            where, reason = explain(error, value, struct)
            report((*path, *where), reason)
            return None
        report(path, f"{what}: {str(error)[:1].lower() + str(error)[1:]}")
        return None


# --- secrets ------------------------------------------------------------------------------------------


def _is_secret(info: Any) -> bool:
    return (
        isinstance(info, msgspec.inspect.Metadata)
        and bool(info.extra)
        and info.extra.get("signalsmith") == "secret"
    )


def _misplaced_secrets(value: Any, annotation: Any, path: Path, report: Report) -> bool:
    """Report every ``Secret`` setting in ``value`` written inline; True when there was one."""
    try:
        info = msgspec.inspect.type_info(annotation)
    except (TypeError, ValueError):
        return False
    found: list[Path] = []
    _walk_secrets(value, info, path, found, depth=0)
    for where in found:
        report(
            where,
            "a secret must be written as a ${ENV_NAME} placeholder, not inline (inline it would "
            "be stored in Redis and shown by `config show`); set the variable in the "
            "environment of the processes that use it",
        )
    return bool(found)


def _walk_secrets(value: Any, info: Any, path: Path, found: list[Path], *, depth: int) -> None:
    if depth > 32 or value is None:
        return
    if _is_secret(info):
        if isinstance(value, str) and not holds_placeholder(value):
            found.append(path)
        return
    inspect = msgspec.inspect
    if isinstance(info, inspect.Metadata):
        _walk_secrets(value, info.type, path, found, depth=depth + 1)
    elif isinstance(info, inspect.StructType) and isinstance(value, dict):
        for field in info.fields:
            if field.encode_name in value:
                _walk_secrets(
                    value[field.encode_name],
                    field.type,
                    (*path, field.encode_name),
                    found,
                    depth=depth + 1,
                )
    elif isinstance(info, inspect.DictType) and isinstance(value, dict):
        for key, item in value.items():
            _walk_secrets(item, info.value_type, (*path, key), found, depth=depth + 1)
    elif isinstance(
        info, inspect.ListType | inspect.VarTupleType | inspect.SetType | inspect.FrozenSetType
    ) and isinstance(value, list):
        for index, item in enumerate(value):
            _walk_secrets(item, info.item_type, (*path, index), found, depth=depth + 1)
    elif isinstance(info, inspect.UnionType):
        for member in info.types:
            _walk_secrets(value, member, path, found, depth=depth + 1)
