"""SignalSmith: a self-hosted, Segment-compatible customer-event pipeline.

Plugins import everything they use from here (and ``signalsmith.testing`` in their tests):
``hookimpl``, the event model, the records hooks exchange, ``Runtime`` and ``Settings``, and the
helpers a plugin's CLI commands and admin routes need. Nothing else of the core is a plugin's
to import; import-linter holds that in CI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from signalsmith.config import Settings
from signalsmith.event_paths import (
    MISSING,
    EventEdit,
    EventPath,
    PathError,
    PathPattern,
    edit_events,
    kind_of,
    path_text,
)
from signalsmith.fql import Condition, FqlError
from signalsmith.fql import parse as parse_condition
from signalsmith.model import (
    Alias,
    Event,
    EventBase,
    Group,
    Identify,
    Page,
    Screen,
    Track,
    to_segment_dict,
)
from signalsmith.records import (
    VIOLATION_RECORD_FIELD,
    VIOLATIONS_STREAM,
    BannerSecret,
    BannerValue,
    CliCommand,
    ContractHandling,
    Credentials,
    DeliveryReport,
    DestinationType,
    Drop,
    Outcome,
    PermanentSinkError,
    Refusal,
    Routing,
    Secret,
    SettingsError,
    Sink,
    SinkError,
    Source,
    SourcePipeline,
    StageResult,
    Transform,
    TransformType,
    Url,
    Violation,
    ViolationRecord,
    WorkspaceDestination,
    WorkspaceDocument,
    WorkspaceProblem,
    WorkspaceSection,
    WorkspaceSource,
    WorkspaceTransform,
)
from signalsmith.runtime import Runtime

if TYPE_CHECKING:
    from signalsmith.admin import AdminClient
    from signalsmith.cli import cli_runtime, print_table, run_with_runtime, settings_of
    from signalsmith.di import RuntimeDependency
    from signalsmith.workspace.placeholders import MissingVariable, resolve_placeholders

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("signalsmith")

# Helpers for plugins' CLI commands, routes and admin clients, imported on first use: a worker
# never needs click, Litestar or the admin client.
_LAZY = {
    "AdminClient": "signalsmith.admin",
    "MissingVariable": "signalsmith.workspace.placeholders",
    "resolve_placeholders": "signalsmith.workspace.placeholders",
    "RuntimeDependency": "signalsmith.di",
    "cli_runtime": "signalsmith.cli",
    "print_table": "signalsmith.cli",
    "run_with_runtime": "signalsmith.cli",
    "settings_of": "signalsmith.cli",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'signalsmith' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


__all__ = [
    "MISSING",
    "VIOLATIONS_STREAM",
    "VIOLATION_RECORD_FIELD",
    "AdminClient",
    "Alias",
    "BannerSecret",
    "BannerValue",
    "CliCommand",
    "Condition",
    "ContractHandling",
    "Credentials",
    "DeliveryReport",
    "DestinationType",
    "Drop",
    "Event",
    "EventBase",
    "EventEdit",
    "EventPath",
    "FqlError",
    "Group",
    "Identify",
    "MissingVariable",
    "Outcome",
    "Page",
    "PathError",
    "PathPattern",
    "PermanentSinkError",
    "Refusal",
    "Routing",
    "Runtime",
    "RuntimeDependency",
    "Screen",
    "Secret",
    "Settings",
    "SettingsError",
    "Sink",
    "SinkError",
    "Source",
    "SourcePipeline",
    "StageResult",
    "Track",
    "Transform",
    "TransformType",
    "Url",
    "Violation",
    "ViolationRecord",
    "WorkspaceDestination",
    "WorkspaceDocument",
    "WorkspaceProblem",
    "WorkspaceSection",
    "WorkspaceSource",
    "WorkspaceTransform",
    "__version__",
    "cli_runtime",
    "edit_events",
    "hookimpl",
    "kind_of",
    "parse_condition",
    "path_text",
    "print_table",
    "resolve_placeholders",
    "run_with_runtime",
    "settings_of",
    "to_segment_dict",
]
