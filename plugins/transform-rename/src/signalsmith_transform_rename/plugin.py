"""The hooks: the ``rename`` transform type."""

from __future__ import annotations

from collections.abc import Callable

from signalsmith import TransformType, hookimpl
from signalsmith_transform_rename.renaming import RenameSettings, build_rename


@hookimpl
def register_transforms(register: Callable[[TransformType], None]) -> None:
    register(
        TransformType(
            name="rename",
            settings=RenameSettings,
            build=build_rename,
            description="Rename events (exact names and patterns) and field paths, per message type",
        )
    )
