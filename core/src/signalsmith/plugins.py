"""The plugin manager: discovery through entry points, selection, and the ways hooks are called.

Build a manager with ``build_plugin_manager()`` (never at import time), so each process and each
test gets a fresh one.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import pluggy

from signalsmith import hookspecs
from signalsmith.records import PluginInfo, Sink, Transform

log = logging.getLogger("signalsmith.plugins")

ENTRY_POINT_GROUP = "signalsmith"


class PluginConfigError(RuntimeError):
    """A plugin set that cannot start: duplicate capability names, a bad registration."""


def build_plugin_manager(
    *,
    allow: Iterable[str] | None = None,
    block: Iterable[str] = (),
    extra_plugins: Iterable[tuple[object, str]] = (),
    load_entry_points: bool = True,
) -> pluggy.PluginManager:
    """A fresh manager with installed plugins loaded, filtered by allowlist and blocklist.

    ``allow`` (``SIGNALSMITH_LOAD_PLUGINS``) names the only entry points to load; ``block``
    (``SIGNALSMITH_BLOCK_PLUGINS``) names ones to skip. ``extra_plugins`` are ``(plugin, name)``
    pairs registered after the entry points (tests and built-ins use this).
    """
    pm = pluggy.PluginManager("signalsmith")
    pm.add_hookspecs(hookspecs)
    allowed = None if allow is None else set(allow)
    for name in block:
        pm.set_blocked(name)
    if load_entry_points:
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and entry_point.name not in allowed:
                continue
            if pm.is_blocked(entry_point.name) or pm.get_plugin(entry_point.name) is not None:
                continue
            plugin = entry_point.load()
            pm.register(plugin, name=entry_point.name)
            dist = entry_point.dist
            _versions(pm)[entry_point.name] = dist.version if dist is not None else None
    for plugin, name in extra_plugins:
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    pm.check_pending()
    return pm


def _versions(pm: pluggy.PluginManager) -> dict[str, str | None]:
    """Distribution versions of entry-point plugins, kept on the manager that loaded them."""
    if not hasattr(pm, "signalsmith_versions"):
        pm.signalsmith_versions = {}  # type: ignore[attr-defined]
    return pm.signalsmith_versions  # type: ignore[attr-defined]


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every registered plugin with its distribution version and the hooks it implements."""
    versions = _versions(pm)
    infos = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        infos.append(PluginInfo(name=name, version=versions.get(name), hooks=hooks))
    return sorted(infos, key=lambda info: info.name)


def impls_in_call_order(pm: pluggy.PluginManager, hook_name: str) -> list[pluggy.HookImpl]:
    """Implementations of a hook in the order pluggy itself would call them."""
    caller = getattr(pm.hook, hook_name)
    return list(reversed(caller.get_hookimpls()))


def call_impl(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
    """Call one hook implementation with the arguments it declares, as pluggy itself does.

    pluggy lets an implementation accept a subset of the spec's arguments (``def
    transform_events(self, events)``), so only the declared ones are passed.
    """
    return impl.function(*(kwargs[name] for name in impl.argnames))


async def resolve(value: Any) -> Any:
    """Await ``value`` if a hook returned an awaitable; hooks may be sync or async."""
    if inspect.isawaitable(value):
        return await value
    return value


def call_registrations(
    pm: pluggy.PluginManager, hook_name: str, record_name: Callable[[Any], str]
) -> list[tuple[str, Any]]:
    """Call a ``register_*`` hook plugin by plugin, returning ``(plugin_name, record)`` pairs.

    Duplicate record names are a startup error that names both plugins.
    """
    found: list[tuple[str, Any]] = []
    owners: dict[str, str] = {}
    for impl in impls_in_call_order(pm, hook_name):
        plugin_name = impl.plugin_name

        def register(record: Any, _plugin: str = plugin_name) -> None:
            name = record_name(record)
            if name in owners:
                raise PluginConfigError(
                    f"{hook_name}: {name!r} is registered by both plugin {owners[name]!r} and "
                    f"plugin {_plugin!r}; uninstall or block one of them "
                    f"(SIGNALSMITH_BLOCK_PLUGINS)"
                )
            owners[name] = _plugin
            found.append((_plugin, record))

        call_impl(impl, register=register)
    return found


def registered_sinks(pm: pluggy.PluginManager) -> list[Sink]:
    """Every destination and warehouse sink, each stamped with the plugin that registered it."""
    import msgspec

    sinks: list[Sink] = []
    seen: dict[str, str] = {}
    for hook_name in ("register_destinations", "register_warehouses"):
        kind = "destination" if hook_name == "register_destinations" else "warehouse"
        for plugin_name, sink in call_registrations(pm, hook_name, lambda s: s.name):
            if sink.name in seen:
                raise PluginConfigError(
                    f"sink {sink.name!r} is registered by both plugin {seen[sink.name]!r} and "
                    f"plugin {plugin_name!r}"
                )
            seen[sink.name] = plugin_name
            sinks.append(msgspec.structs.replace(sink, plugin=plugin_name, kind=kind))
    return sinks


def registered_transforms(pm: pluggy.PluginManager) -> dict[str, Transform]:
    import msgspec

    return {
        transform.name: msgspec.structs.replace(transform, plugin=plugin_name)
        for plugin_name, transform in call_registrations(
            pm, "register_transforms", lambda t: t.name
        )
    }


def sink_hook_impl(pm: pluggy.PluginManager, sink: Sink) -> pluggy.HookImpl:
    """The one ``deliver_events``/``write_events`` implementation that serves ``sink``."""
    hook_name = "deliver_events" if sink.kind == "destination" else "write_events"
    for impl in impls_in_call_order(pm, hook_name):
        if impl.plugin_name == sink.plugin:
            return impl
    raise PluginConfigError(
        f"plugin {sink.plugin!r} registers {sink.kind} {sink.name!r} but implements no "
        f"{hook_name} hook"
    )
