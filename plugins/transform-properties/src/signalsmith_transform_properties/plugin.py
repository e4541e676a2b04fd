"""The hooks: the ``properties`` transform type."""

from __future__ import annotations

from collections.abc import Callable

from signalsmith import TransformType, hookimpl
from signalsmith_transform_properties.editing import PropertiesSettings, build_properties


@hookimpl
def register_transforms(register: Callable[[TransformType], None]) -> None:
    register(
        TransformType(
            name="properties",
            settings=PropertiesSettings,
            build=build_properties,
            description="Add (static or templated), remove, hash (HMAC-SHA-256) and cap event fields",
        )
    )
