"""Values that read other fields of the event: ``"{{ context.page.path }}"``.

Each ``{{ ... }}`` holds an FQL expression (``signalsmith.parse_condition``: a path, or a
function of paths such as ``lowercase(context.traits.email)``), parsed once. A value that is one
expression and nothing else keeps the expression's type (a number stays a number); otherwise
the parts are joined as text. Every field an expression reads must be a field events have
(``properties.*``, ``traits.*``, ``context.*``, ``userId``, ...), checked when the workspace is.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from signalsmith import (
    MISSING,
    Condition,
    EventPath,
    FqlError,
    PathError,
    parse_condition,
    path_text,
)

_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


class TemplateError(ValueError):
    pass


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    return msgspec.json.encode(value).decode()


class Template:
    """A parsed value; ``render(event)`` is ``(value, None)`` or ``(MISSING, why)``."""

    __slots__ = ("expressions", "literal", "parts", "paths", "whole")

    def __init__(self, text: str) -> None:
        self.parts: list[str | Condition] = []
        position = 0
        for found in _EXPRESSION.finditer(text):
            if found.start() > position:
                self.parts.append(text[position : found.start()])
            expression = found.group(1).strip()
            if not expression:
                raise TemplateError(f"an empty {{{{ }}}} at position {found.start() + 1}")
            try:
                condition = parse_condition(expression)
            except FqlError as error:
                raise TemplateError(f"{{{{ {expression} }}}} does not parse: {error}") from None
            self.parts.append(condition)
            position = found.end()
        if position < len(text):
            self.parts.append(text[position:])
        self.expressions = [part for part in self.parts if isinstance(part, Condition)]
        self.literal = not self.expressions
        self.whole = len(self.parts) == 1 and not self.literal
        self.paths: list[EventPath] = []
        for condition in self.expressions:
            for segments in condition.paths:
                try:
                    self.paths.append(EventPath(path_text(segments[0], segments[1:])))
                except PathError as error:
                    raise TemplateError(
                        f"{{{{ {condition.source} }}}} names an unknown field: {error}"
                    ) from None

    @staticmethod
    def holds_expressions(text: str) -> bool:
        return _EXPRESSION.search(text) is not None

    def render(self, event: Any) -> tuple[Any, str | None]:
        if self.whole:
            value = self.expressions[0].value(event)
            if value is None:
                return MISSING, self._why_missing(event)
            return value, None
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part.value(event)
            if value is None:
                return MISSING, self._why_missing(event)
            out.append(_text(value))
        return "".join(out), None

    def _why_missing(self, event: Any) -> str:
        for path in self.paths:
            if path.read(event) is MISSING:
                return path.why_missing(event)
        return "an expression has no value"
