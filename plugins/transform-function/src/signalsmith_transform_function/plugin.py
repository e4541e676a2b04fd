"""The hooks: the ``function`` transform type."""

from __future__ import annotations

from collections.abc import Callable

from signalsmith import TransformType, hookimpl
from signalsmith_transform_function.running import FunctionSettings, build_function


@hookimpl
def register_transforms(register: Callable[[TransformType], None]) -> None:
    register(
        TransformType(
            name="function",
            settings=FunctionSettings,
            build=build_function,
            description="A Python function of your own (module:function), within a time budget",
        )
    )
