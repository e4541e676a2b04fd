"""The workspace: one declarative document of sources, transforms and destinations, checked
against what the installed plugins define, stored as numbered versions in Redis, and followed
live by every process. `docs/workspace.md` describes it for users.

- ``text``: reading YAML/JSON with the line of every value, ``$include``;
- ``placeholders``: ``${ENV_NAME}`` secrets, resolved only where used;
- ``checking`` and ``validation``: the whole document checked at once, every error with its path;
- ``schema``: the document's JSON Schema;
- ``store`` and ``operations``: numbered versions, apply with compare-and-set, rollback, diff;
- ``active`` and ``follower``: a version built for one process, and ``runtime.workspace``.
"""

from __future__ import annotations

from signalsmith.workspace.active import ActiveWorkspace, BuildFailed
from signalsmith.workspace.follower import (
    UnknownSource,
    Workspace,
    WorkspaceStatus,
    WorkspaceUnavailable,
)
from signalsmith.workspace.placeholders import MissingVariable, resolve_placeholders
from signalsmith.workspace.store import StaleBase, StoredVersion, VersionInfo, WorkspaceStore
from signalsmith.workspace.text import DocumentText
from signalsmith.workspace.validation import Registry, WorkspaceError, WorkspaceInvalid

__all__ = [
    "ActiveWorkspace",
    "BuildFailed",
    "DocumentText",
    "MissingVariable",
    "Registry",
    "StaleBase",
    "StoredVersion",
    "UnknownSource",
    "VersionInfo",
    "Workspace",
    "WorkspaceError",
    "WorkspaceInvalid",
    "WorkspaceStatus",
    "WorkspaceStore",
    "WorkspaceUnavailable",
    "resolve_placeholders",
]
