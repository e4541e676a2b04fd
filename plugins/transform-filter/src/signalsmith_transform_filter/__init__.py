"""SignalSmith's filter transform: drop events by an FQL condition, sample users by a stable
hash. ``plugin`` registers the ``filter`` type; ``filtering`` holds its settings and function."""

from __future__ import annotations

from signalsmith_transform_filter.filtering import FilterSettings, Sample, sample_point

__all__ = ["FilterSettings", "Sample", "sample_point"]
