"""Booting a process: its plugin manager, its Redis client, and its plugins' startup.

Collectors, workers and CLI commands all start here, so each gets the same plugins, checked
the same way, whatever the role.
"""

from __future__ import annotations

import importlib
import logging

import pluggy
import redis.asyncio as aioredis

from signalsmith.autopipeline import AutoPipelineRedis
from signalsmith.config import Settings
from signalsmith.hooks import Hooks, trace_hooks
from signalsmith.plugins import build_plugin_manager
from signalsmith.runtime import Role, Runtime
from signalsmith.transforms import configured_transforms
from signalsmith.workspace import Registry, Workspace

log = logging.getLogger("signalsmith.boot")


def connect_redis(url: str, *, auto_pipeline: bool = False) -> aioredis.Redis:
    """An async client with timeouts, so an unreachable Redis fails fast into a 503.

    ``auto_pipeline`` makes concurrent commands share round trips (``signalsmith.autopipeline``);
    processes that answer requests use it, since every request awaits Redis more than once.
    """
    client_class = AutoPipelineRedis if auto_pipeline else aioredis.Redis
    return client_class.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
    )


def plugin_manager_for(settings: Settings) -> pluggy.PluginManager:
    """The manager for this process: installed plugins plus ``SIGNALSMITH_PLUGIN_MODULES``."""
    modules = [
        (importlib.import_module(module_name), module_name)
        for module_name in settings.plugin_modules
    ]
    pm = build_plugin_manager(
        allow=settings.plugins_allow, block=settings.plugins_block, extra_plugins=modules
    )
    if settings.trace_hooks:
        trace_hooks(pm)
    return pm


async def start_runtime(
    settings: Settings,
    role: Role,
    *,
    pm: pluggy.PluginManager | None = None,
    redis: aioredis.Redis | None = None,
) -> Runtime:
    """Connect to Redis, collect the plugins' capabilities, run every ``startup`` hook."""
    if settings.redis_url is None and redis is None:
        raise RuntimeError(
            "no Redis configured: set SIGNALSMITH_REDIS_URL, or run `signalsmith serve`, "
            "which starts an embedded Redis"
        )
    hooks = Hooks(pm if pm is not None else plugin_manager_for(settings))
    # Every process checks capability names and configured instances, so a mistake fails the
    # collector too, not only the worker that would have run the sink.
    sinks = hooks.sinks()
    transform_types = hooks.transform_types()
    transforms = configured_transforms(settings.transforms, transform_types)
    client = (
        redis
        if redis is not None
        else connect_redis(
            settings.redis_url or "", auto_pipeline=role in ("collector", "embedded")
        )
    )
    # The workspace (issue 11): what a document may name here, and the version this process
    # runs, loaded after the plugins' startup and followed live until stop_runtime.
    workspace = Workspace(
        client,
        lambda *parts: ":".join((settings.key_prefix, *parts)),
        Registry.from_hooks(hooks, sinks, transform_types),
        collects=role in ("collector", "embedded"),
        delivers=role in ("worker", "embedded"),
    )
    runtime = Runtime(
        settings=settings,
        hooks=hooks,
        role=role,
        redis=client,
        workspace=workspace,
        sinks=sinks,
        transform_types=transform_types,
        transforms=transforms,
    )
    await hooks.startup(runtime)
    try:
        await workspace.start(required=role != "cli")
    except BaseException:
        await hooks.shutdown(runtime)
        raise
    return runtime


async def stop_runtime(runtime: Runtime, *, close_redis: bool = True) -> None:
    """Stop following the workspace, run every ``shutdown`` hook (each in its own try), then
    close Redis."""
    await runtime.workspace.stop()
    await runtime.hooks.shutdown(runtime)
    if close_redis:
        await runtime.redis.aclose()
