"""The hooks: the ``filter`` transform type."""

from __future__ import annotations

from collections.abc import Callable

from signalsmith import TransformType, hookimpl
from signalsmith_transform_filter.filtering import FilterSettings, build_filter


@hookimpl
def register_transforms(register: Callable[[TransformType], None]) -> None:
    register(
        TransformType(
            name="filter",
            settings=FilterSettings,
            build=build_filter,
            description="Drop events by an FQL condition; sample users by a stable hash",
        )
    )
