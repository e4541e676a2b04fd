"""Building blocks for tests: a plugin manager with chosen plugins, a runtime, a collector app
with an HTTP client, and a worker running in the test's event loop.

Each is a plain function or async context manager, so a test (or a fixture, or a benchmark)
composes them; ``signalsmith.testing.pytest_plugin`` offers them as fixtures too. Everything is
real: the app is the collector's own, the worker the core's, Redis the test's server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pluggy
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.testing import AsyncTestClient

from signalsmith.boot import start_runtime, stop_runtime
from signalsmith.config import Settings
from signalsmith.hooks import Hooks
from signalsmith.plugins import build_plugin_manager
from signalsmith.records import Sink
from signalsmith.runtime import Role, Runtime

# How long a running worker may take to finish its batch in flight when the test ends.
WORKER_STOP_SECONDS = 30.0

PluginSpec = object | tuple[object, str]


def _named(plugin: PluginSpec, position: int) -> tuple[object, str]:
    if isinstance(plugin, tuple):
        return plugin  # type: ignore[return-value]
    name = getattr(plugin, "name", None) if not isinstance(plugin, type) else None
    if not isinstance(name, str):
        name = f"{type(plugin).__name__.lower()}-{position}"
    return plugin, name


def plugin_manager(
    *plugins: PluginSpec, entry_points: Iterable[str] | None = ()
) -> pluggy.PluginManager:
    """A fresh manager holding exactly ``plugins`` plus the installed entry points named in
    ``entry_points`` (None: every installed one; the default, none).

    A plugin is an object or module with ``@hookimpl`` functions, or a ``(plugin, name)`` pair;
    without a name it is registered as ``<class>-<position>``.
    """
    allow = None if entry_points is None else list(entry_points)
    return build_plugin_manager(
        allow=allow,
        load_entry_points=allow is None or bool(allow),
        extra_plugins=[_named(plugin, position) for position, plugin in enumerate(plugins)],
    )


def registered_sinks(pm: pluggy.PluginManager) -> list[Sink]:
    """The sinks ``pm``'s plugins register, as a process would collect them at startup."""
    return Hooks(pm).sinks()


@asynccontextmanager
async def runtime_for(
    settings: Settings,
    *plugins: PluginSpec,
    role: Role = "worker",
    entry_points: Iterable[str] | None = (),
    pm: pluggy.PluginManager | None = None,
    redis: aioredis.Redis | None = None,
) -> AsyncIterator[Runtime]:
    """A started runtime (every ``startup`` run) with these plugins; stopped on exit."""
    manager = pm if pm is not None else plugin_manager(*plugins, entry_points=entry_points)
    runtime = await start_runtime(settings, role, pm=manager, redis=redis)
    try:
        yield runtime
    finally:
        await stop_runtime(runtime, close_redis=redis is None)


def collector_app(
    settings: Settings,
    *plugins: PluginSpec,
    entry_points: Iterable[str] | None = (),
    pm: pluggy.PluginManager | None = None,
) -> Litestar:
    """The collector app with these plugins (and, when ``settings.embedded_worker``, the
    worker in its process, as `signalsmith serve` runs it on the embedded defaults)."""
    from signalsmith.collector import create_app
    from signalsmith.embedded_worker import EmbeddedWorker

    manager = pm if pm is not None else plugin_manager(*plugins, entry_points=entry_points)
    companions = [EmbeddedWorker()] if settings.embedded_worker else []
    return create_app(settings, manager, companions=companions)


@asynccontextmanager
async def collector_client(
    settings: Settings,
    *plugins: PluginSpec,
    entry_points: Iterable[str] | None = (),
    pm: pluggy.PluginManager | None = None,
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """An HTTP client on the collector app with these plugins (see ``collector_app``), its
    lifespan run (so its runtime is started and stopped with the client)."""
    app = collector_app(settings, *plugins, entry_points=entry_points, pm=pm)
    async with AsyncTestClient(app) as client:
        yield client


@dataclass
class RunningWorker:
    """A worker delivering in the test's event loop; ``stop()`` finishes its batch in flight."""

    worker: Any
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    @property
    def runtime(self) -> Runtime:
        return self.worker.runtime

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout=WORKER_STOP_SECONDS)


@asynccontextmanager
async def running_worker(
    settings: Settings,
    *plugins: PluginSpec,
    only: Sequence[str] | None = None,
    entry_points: Iterable[str] | None = (),
    pm: pluggy.PluginManager | None = None,
    runtime: Runtime | None = None,
    **options: Any,
) -> AsyncIterator[RunningWorker]:
    """A ``Worker`` over these plugins (or ``pm``, or ``runtime``), running until the block
    ends. ``options`` go to ``Worker`` (``consumer=``, ``trim_interval=``)."""
    from signalsmith.worker import Worker

    async with _runtime_or(runtime, settings, plugins, entry_points, pm) as started:
        worker = Worker(started, only, **options)
        stop = asyncio.Event()
        running = RunningWorker(worker, stop, asyncio.create_task(worker.run(stop)))
        try:
            yield running
        finally:
            await running.stop()


@asynccontextmanager
async def _runtime_or(
    runtime: Runtime | None,
    settings: Settings,
    plugins: Sequence[PluginSpec],
    entry_points: Iterable[str] | None,
    pm: pluggy.PluginManager | None,
) -> AsyncIterator[Runtime]:
    if runtime is not None:
        yield runtime
        return
    async with runtime_for(settings, *plugins, entry_points=entry_points, pm=pm) as started:
        yield started
