"""What one process shares with its plugins: settings, the plugin manager, the Redis client."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy
import redis.asyncio as aioredis

from signalsmith.autopipeline import AutoPipelineRedis
from signalsmith.config import Settings
from signalsmith.plugins import (
    build_plugin_manager,
    call_impl,
    impls_in_call_order,
    registered_sinks,
    registered_transforms,
    resolve,
)
from signalsmith.records import Sink, Transform

log = logging.getLogger("signalsmith.runtime")

# "embedded" is the collector and the worker in one process (`signalsmith serve` on defaults).
Role = Literal["collector", "worker", "cli", "embedded"]


@dataclass
class Runtime:
    """Handed to ``startup``/``shutdown`` hooks; plugins keep per-process state in ``state``."""

    settings: Settings
    pm: pluggy.PluginManager
    role: Role
    redis: aioredis.Redis
    # Capabilities, collected (and checked for duplicate names) once at startup.
    sinks: list[Sink] = field(default_factory=list)
    transforms: dict[str, Transform] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def delivers(self) -> bool:
        """Whether this process runs sinks (open warehouse and destination clients here)."""
        return self.role in ("worker", "embedded")

    def key(self, *parts: str) -> str:
        """A Redis key under this deployment's prefix: ``key("keys", h)`` -> ``prefix:keys:h``."""
        return ":".join((self.settings.key_prefix, *parts))


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
    return build_plugin_manager(
        allow=settings.plugins_allow, block=settings.plugins_block, extra_plugins=modules
    )


async def start_runtime(
    settings: Settings,
    role: Role,
    *,
    pm: pluggy.PluginManager | None = None,
    redis: aioredis.Redis | None = None,
) -> Runtime:
    """Connect to Redis and run every plugin's ``startup`` hook, in plugin order."""
    if settings.redis_url is None and redis is None:
        raise RuntimeError(
            "no Redis configured: set SIGNALSMITH_REDIS_URL, or run `signalsmith serve`, "
            "which starts an embedded Redis"
        )
    pm = pm if pm is not None else plugin_manager_for(settings)
    # Every process checks capability names, so a duplicate fails the collector too, not only
    # the worker that would have run the sink.
    sinks = registered_sinks(pm)
    transforms = registered_transforms(pm)
    runtime = Runtime(
        settings=settings,
        pm=pm,
        role=role,
        redis=redis
        if redis is not None
        else connect_redis(
            settings.redis_url or "", auto_pipeline=role in ("collector", "embedded")
        ),
        sinks=sinks,
        transforms=transforms,
    )
    for impl in impls_in_call_order(runtime.pm, "startup"):
        await resolve(call_impl(impl, runtime=runtime))
    return runtime


async def stop_runtime(runtime: Runtime, *, close_redis: bool = True) -> None:
    """Run every ``shutdown`` hook (each in its own try), then close Redis."""
    for impl in impls_in_call_order(runtime.pm, "shutdown"):
        try:
            await resolve(call_impl(impl, runtime=runtime))
        except Exception:
            log.exception("plugin %s failed in shutdown", impl.plugin_name)
    if close_redis:
        await runtime.redis.aclose()
