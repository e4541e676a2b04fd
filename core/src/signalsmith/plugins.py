"""The plugin manager: discovery through entry points, selection, and listing.

Build a manager with ``build_plugin_manager()`` (never at import time), so each process and each
test gets a fresh one. The core calls hooks only through ``signalsmith.hooks.Hooks``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import metadata

import pluggy

from signalsmith import hookspecs
from signalsmith.hooks import PluginConfigError
from signalsmith.records import PluginInfo

log = logging.getLogger("signalsmith.plugins")

ENTRY_POINT_GROUP = "signalsmith"

__all__ = ["ENTRY_POINT_GROUP", "PluginConfigError", "build_plugin_manager", "plugin_infos"]


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
