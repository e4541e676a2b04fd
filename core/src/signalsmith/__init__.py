"""SignalSmith: a self-hosted, Segment-compatible customer-event pipeline.

Plugins import ``hookimpl`` from here and the records they exchange with the core.
"""

from __future__ import annotations

import pluggy

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
    BannerValue,
    CliCommand,
    Credentials,
    Drop,
    Outcome,
    PermanentSinkError,
    Refusal,
    Secret,
    Sink,
    SinkError,
    Source,
    StageResult,
    Transform,
)

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("signalsmith")

__all__ = [
    "Alias",
    "BannerValue",
    "CliCommand",
    "Credentials",
    "Drop",
    "Event",
    "EventBase",
    "Group",
    "Identify",
    "Outcome",
    "Page",
    "PermanentSinkError",
    "Refusal",
    "Screen",
    "Secret",
    "Sink",
    "SinkError",
    "Source",
    "StageResult",
    "Track",
    "Transform",
    "__version__",
    "hookimpl",
    "to_segment_dict",
]
