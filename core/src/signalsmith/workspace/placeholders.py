"""``${ENV_NAME}`` placeholders: found when a document is checked, resolved where they are used.

A string setting may hold placeholders anywhere (``"Bearer ${CRM_TOKEN}"``); ``$${`` writes a
literal ``${``. The document is stored, shown and diffed as written. Only the process that uses a
setting resolves it, from its own environment, right before converting the settings to their
type; the resolved value is never logged, stored or put in an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MissingVariable(Exception):
    """A placeholder names an environment variable this process does not have."""

    def __init__(self, names: list[str]) -> None:
        listed = ", ".join(names)
        super().__init__(
            f"environment variable{'s' if len(names) > 1 else ''} {listed} "
            f"{'are' if len(names) > 1 else 'is'} not set in this process; set "
            f"{'them' if len(names) > 1 else 'it'} where this component runs"
        )
        self.names = names


def placeholders_in(text: str) -> list[str]:
    """The variable names ``text`` refers to (``$${X}`` is a literal, not a placeholder)."""
    return [match.group(2) for match in PLACEHOLDER.finditer(text) if not match.group(1)]


def holds_placeholder(value: Any) -> bool:
    """Whether ``value`` (a string, or anything nested in lists and mappings) has one."""
    if isinstance(value, str):
        return bool(placeholders_in(value))
    if isinstance(value, Mapping):
        return any(holds_placeholder(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(holds_placeholder(item) for item in value)
    return False


def resolve_placeholders(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """``value`` with every placeholder replaced from ``environ`` (the process's environment).

    Raises ``MissingVariable`` naming every variable that is not set (never a value).
    """
    env = os.environ if environ is None else environ
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "${" + match.group(2) + "}"
        name = match.group(2)
        found = env.get(name)
        if found is None:
            if name not in missing:
                missing.append(name)
            return ""
        return found

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return PLACEHOLDER.sub(substitute, item) if "$" in item else item
        if isinstance(item, Mapping):
            return {key: walk(inner) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [walk(inner) for inner in item]
        return item

    resolved = walk(value)
    if missing:
        raise MissingVariable(missing)
    return resolved
