"""The hooks: the ``enrich`` transform type."""

from __future__ import annotations

from collections.abc import Callable

from signalsmith import TransformType, hookimpl
from signalsmith_transform_enrich.enriching import build_enrich
from signalsmith_transform_enrich.settings import EnrichSettings


@hookimpl
def register_transforms(register: Callable[[TransformType], None]) -> None:
    register(
        TransformType(
            name="enrich",
            settings=EnrichSettings,
            build=build_enrich,
            description="User agent, IP geolocation (MaxMind DB) and HTTP lookups into events",
        )
    )
