"""What changes between two workspace documents, component by component (`config diff`)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from signalsmith.records import WorkspaceDocument
from signalsmith.workspace.text import describe, render_path

ChangeKind = Literal["added", "removed", "changed"]


class Change(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One difference: a component added or removed, or one value of it changed.

    Values are shown as written (secrets are placeholders), shortened.
    """

    kind: ChangeKind
    path: str
    old: str | None = None
    new: str | None = None

    def __str__(self) -> str:
        if self.kind == "added":
            return f"+ {self.path}" + (f" ({self.new})" if self.new else "")
        if self.kind == "removed":
            return f"- {self.path}" + (f" ({self.old})" if self.old else "")
        return f"~ {self.path}: {self.old} -> {self.new}"


def _components(document: WorkspaceDocument | None) -> dict[tuple[str, str], Any]:
    """Every component of ``document`` as plain values, by (part, name)."""
    if document is None:
        return {}
    found: dict[tuple[str, str], Any] = {}
    for name, source in document.sources.items():
        found["sources", name] = {
            "description": source.description,
            "transforms": list(source.transforms),
            "destinations": list(source.destinations),
            **msgspec.to_builtins(source.fields),
        }
    for name, transform in document.transforms.items():
        found["transforms", name] = {
            "type": transform.type,
            "settings": transform.written,
            "description": transform.description,
        }
    for name, destination in document.destinations.items():
        routing = destination.routing
        found["destinations", name] = {
            "type": destination.type,
            "settings": destination.written,
            "description": destination.description,
            "routing": {
                "types": list(routing.types),
                "deny_types": list(routing.deny_types),
                "events": list(routing.events),
                "deny_events": list(routing.deny_events),
                "if": routing.condition,
                "consent": list(routing.consent),
                "filters": msgspec.to_builtins(routing.filters),
            },
            "mapping": destination.mapping,
            "mappings": list(destination.mappings),
            "batch_size": destination.batch_size,
            "max_wait_seconds": destination.max_wait_seconds,
            "max_attempts": destination.max_attempts,
            "retry_window_seconds": destination.retry_window_seconds,
        }
    for name, settings in document.sections.items():
        found[name, ""] = msgspec.to_builtins(settings)
    return found


def _label(part: str, value: Any) -> str | None:
    if part in ("transforms", "destinations") and isinstance(value, dict):
        return f"type {value.get('type')}"
    return None


def _show(value: Any) -> str:
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return "[" + ", ".join(describe(v, 30) for v in value) + "]"
    return describe(value)


def _leaves(path: tuple[str | int, ...], old: Any, new: Any, out: list[Change]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if key not in new:
                out.append(
                    Change(kind="removed", path=render_path((*path, key)), old=_show(old[key]))
                )
            elif key not in old:
                out.append(
                    Change(kind="added", path=render_path((*path, key)), new=_show(new[key]))
                )
            else:
                _leaves((*path, key), old[key], new[key], out)
        return
    out.append(Change(kind="changed", path=render_path(path), old=_show(old), new=_show(new)))


def diff_documents(old: WorkspaceDocument | None, new: WorkspaceDocument) -> list[Change]:
    """The changes from ``old`` (None: nothing applied yet) to ``new``, in document order."""
    before = _components(old)
    after = _components(new)
    changes: list[Change] = []
    for key in [*before, *(k for k in after if k not in before)]:
        part, name = key
        path: tuple[str | int, ...] = (part, name) if name else (part,)
        if key not in after:
            changes.append(
                Change(kind="removed", path=render_path(path), old=_label(part, before[key]))
            )
        elif key not in before:
            changes.append(
                Change(kind="added", path=render_path(path), new=_label(part, after[key]))
            )
        else:
            _leaves(path, before[key], after[key], changes)
    return changes
