"""A Segment-compatible forward for SignalSmith: events sent in batches to Segment's HTTP API,
RudderStack or another SignalSmith. The plugin is ``signalsmith_dest_segment.plugin``."""

from __future__ import annotations

from signalsmith_dest_segment.plugin import LIMITS, SegmentSettings

__version__ = "0.1.0"

__all__ = ["LIMITS", "SegmentSettings", "__version__"]
