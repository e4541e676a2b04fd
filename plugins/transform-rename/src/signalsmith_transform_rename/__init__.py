"""SignalSmith's rename transform: event names and field paths, per message type.
``plugin`` registers the ``rename`` type; ``renaming`` holds its settings and function."""

from __future__ import annotations

from signalsmith_transform_rename.renaming import (
    EventRename,
    FieldRename,
    KeyRename,
    RenameSettings,
)

__all__ = ["EventRename", "FieldRename", "KeyRename", "RenameSettings"]
