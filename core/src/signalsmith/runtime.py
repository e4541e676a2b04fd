"""What one process shares with its plugins: settings, hooks, the Redis client, their state.

Every hook that needs context can take ``runtime``. A plugin keeps its per-process state on
objects it attaches to ``runtime.state`` in ``startup`` (never in module globals), and finds them
there in its other hooks. Processes are booted by ``signalsmith.boot``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pluggy
import redis.asyncio as aioredis

from signalsmith.config import Settings
from signalsmith.hooks import Hooks
from signalsmith.records import Sink, Transform, TransformType

if TYPE_CHECKING:
    from signalsmith.workspace import Workspace
else:
    # Litestar evaluates these annotations (the runtime is a route dependency); the workspace
    # package sits above this module, so only type checkers import it.
    Workspace = Any

T = TypeVar("T")

# "embedded" is the collector and the worker in one process (`signalsmith serve` on defaults).
Role = Literal["collector", "worker", "cli", "embedded"]


@dataclass
class Runtime:
    """Handed to every hook that declares a ``runtime`` argument."""

    settings: Settings
    hooks: Hooks
    role: Role
    redis: aioredis.Redis
    # The workspace version this process runs, followed live: ``workspace.active`` (None when
    # no workspace is applied); see `docs/workspace.md`.
    workspace: Workspace
    # Capabilities, collected (and checked for duplicate names) once at startup.
    sinks: list[Sink] = field(default_factory=list)
    transform_types: dict[str, TransformType] = field(default_factory=dict)
    # Configured transform instances by name (see `signalsmith.transforms`).
    transforms: dict[str, Transform] = field(default_factory=dict)
    # Per-plugin state, keyed by the plugin's name.
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def pm(self) -> pluggy.PluginManager:
        return self.hooks.pm

    @property
    def delivers(self) -> bool:
        """Whether this process runs sinks (open warehouse and destination clients here)."""
        return self.role in ("worker", "embedded")

    def key(self, *parts: str) -> str:
        """A Redis key under this deployment's prefix: ``key("keys", h)`` -> ``prefix:keys:h``."""
        return ":".join((self.settings.key_prefix, *parts))

    def attached(self, name: str, kind: type[T]) -> T:
        """The object a plugin attached as ``state[name]`` at startup, checked to be a ``kind``.

        Raises a RuntimeError naming the plugin when it is missing: its ``startup`` did not run
        in this process.
        """
        found = self.state.get(name)
        if not isinstance(found, kind):
            raise RuntimeError(
                f"{name}: nothing attached to the runtime in this process (its startup hook has "
                f"not run here, or failed); expected a {kind.__name__}"
            )
        return found
