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
from signalsmith.mapping import UNDEFINED, EventMapping, MappingInvalid, compile_mapping
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
    DestinationFilter,
    DestinationType,
    Drop,
    FilterAction,
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
    from signalsmith.http_delivery import (
        AdaptiveRate,
        DestinationInstances,
        HttpAnswer,
        HttpDestination,
        HttpSettings,
        Prepared,
        RequestPlan,
        Settlement,
        chunked,
        retry_after_seconds,
        status_outcome,
    )
    from signalsmith.workspace.placeholders import MissingVariable, resolve_placeholders

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("signalsmith")

# Helpers for plugins' CLI commands, routes and admin clients, imported on first use: a worker
# never needs click, Litestar or the admin client.
_LAZY = {
    "AdminClient": "signalsmith.admin",
    # The HTTP side destination plugins share (httpx is imported only when one is used).
    "AdaptiveRate": "signalsmith.http_delivery",
    "DestinationInstances": "signalsmith.http_delivery",
    "HttpAnswer": "signalsmith.http_delivery",
    "HttpDestination": "signalsmith.http_delivery",
    "HttpSettings": "signalsmith.http_delivery",
    "Prepared": "signalsmith.http_delivery",
    "RequestPlan": "signalsmith.http_delivery",
    "Settlement": "signalsmith.http_delivery",
    "chunked": "signalsmith.http_delivery",
    "retry_after_seconds": "signalsmith.http_delivery",
    "status_outcome": "signalsmith.http_delivery",
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
    "UNDEFINED",
    "VIOLATIONS_STREAM",
    "VIOLATION_RECORD_FIELD",
    "AdaptiveRate",
    "AdminClient",
    "Alias",
    "BannerSecret",
    "BannerValue",
    "CliCommand",
    "Condition",
    "ContractHandling",
    "Credentials",
    "DeliveryReport",
    "DestinationFilter",
    "DestinationInstances",
    "DestinationType",
    "Drop",
    "Event",
    "EventBase",
    "EventEdit",
    "EventMapping",
    "EventPath",
    "FilterAction",
    "FqlError",
    "Group",
    "HttpAnswer",
    "HttpDestination",
    "HttpSettings",
    "Identify",
    "MappingInvalid",
    "MissingVariable",
    "Outcome",
    "Page",
    "PathError",
    "PathPattern",
    "PermanentSinkError",
    "Prepared",
    "Refusal",
    "RequestPlan",
    "Routing",
    "Runtime",
    "RuntimeDependency",
    "Screen",
    "Secret",
    "Settings",
    "SettingsError",
    "Settlement",
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
    "chunked",
    "cli_runtime",
    "compile_mapping",
    "edit_events",
    "hookimpl",
    "kind_of",
    "parse_condition",
    "path_text",
    "print_table",
    "resolve_placeholders",
    "retry_after_seconds",
    "run_with_runtime",
    "settings_of",
    "status_outcome",
    "to_segment_dict",
]
