"""The one way the core calls plugins: pluggy's hook callers behind a small typed facade.

Every call goes through ``pm.hook.<name>`` or a pluggy subset caller of it, so ordering
(``tryfirst``/``trylast``), ``firstresult``, wrappers (``@hookimpl(wrapper=True)``), tracing
(``SIGNALSMITH_TRACE_HOOKS``) and call monitoring work as pluggy documents them. pluggy itself
is synchronous and calls every implementation of a hook in one go; three contracts of
`docs/plugin-hooks.md` need more than that, and the facade adds them with pluggy's own callers:

- **Awaiting.** An implementation may be ``async``; the facade awaits what it returns.
- **One plugin at a time.** Decisions (``authenticate``, ``admit_events``) stop at the first
  answer, even an awaited one; chained stages hand one plugin's output to the next; fan-out
  hooks (``shutdown``, ``observe_outcomes``) isolate each plugin's failure; a sink's batches go
  to the plugin that registered it alone. For these the facade calls each plugin through its own
  subset caller (``pm.subset_hook_caller``): that plugin's implementation plus every wrapper of
  the hook, so a wrapper still wraps each call.
- **Attribution.** A failure or a duplicate capability name is reported with the plugin's name.

Build a ``Hooks`` once the plugin manager has every plugin registered (``boot.start_runtime``
does): the per-plugin callers are worked out once, not on the request path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec
import pluggy

from signalsmith.mapping import MappingInvalid, check_default_mappings
from signalsmith.records import (
    CORE_SECTIONS,
    CORE_SOURCE_FIELDS,
    Credentials,
    DestinationType,
    Outcome,
    Refusal,
    Sink,
    Source,
    TransformType,
    WorkspaceSection,
)

if TYPE_CHECKING:
    import click

log = logging.getLogger("signalsmith.hooks")

T = TypeVar("T")


class PluginConfigError(RuntimeError):
    """A plugin set that cannot start: duplicate capability names, a bad registration."""


class PluginFailed(Exception):
    """A plugin's implementation raised; ``__cause__`` is what it raised."""

    def __init__(self, plugin_name: str, hook_name: str) -> None:
        super().__init__(f"plugin {plugin_name!r} failed in {hook_name}")
        self.plugin_name = plugin_name
        self.hook_name = hook_name


class PluginCall(NamedTuple):
    """One plugin's implementation of a hook, as a pluggy caller that runs it (and wrappers)."""

    plugin_name: str
    call: Callable[..., Any]
    # The spec's firstresult: a caller of a firstresult hook returns the answer itself, any
    # other caller the list of non-None answers.
    firstresult: bool

    def __call__(self, **kwargs: Any) -> Any:
        """The implementation's own return value (None when it returned None)."""
        result = self.call(**kwargs)
        if self.firstresult:
            return result
        return result[0] if result else None


async def resolve(value: T | Awaitable[T]) -> T:
    """Await ``value`` if a hook returned an awaitable; hooks may be sync or async."""
    if inspect.isawaitable(value):
        return await value
    return value  # type: ignore[return-value]


def _is_wrapper(impl: pluggy.HookImpl) -> bool:
    return bool(impl.wrapper or impl.hookwrapper)


class Hooks:
    """Typed calls of every hook in ``signalsmith.hookspecs``; see the module docstring."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._per_plugin: dict[str, list[PluginCall]] = {}
        # Observers that declined the routine path; worked out on first use (lean_observers).
        self._lean: frozenset[str] | None = None

    # --- the per-plugin callers ------------------------------------------------------------

    def per_plugin(self, hook_name: str) -> list[PluginCall]:
        """Each plugin's implementation of ``hook_name``, in the order pluggy calls them.

        Wrappers are not listed: they are part of every caller.
        """
        found = self._per_plugin.get(hook_name)
        if found is not None:
            return found
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook_name)
        spec = caller.spec
        firstresult = bool(spec and spec.opts.get("firstresult"))
        impls = caller.get_hookimpls()
        wrappers = {impl.plugin for impl in impls if _is_wrapper(impl)}
        everyone = self.pm.get_plugins()
        found = []
        # get_hookimpls() lists implementations in registration order (tryfirst last);
        # pluggy calls them from the end.
        for impl in reversed(impls):
            if _is_wrapper(impl):
                continue
            keep = wrappers | {impl.plugin}
            subset = self.pm.subset_hook_caller(
                hook_name, remove_plugins=[plugin for plugin in everyone if plugin not in keep]
            )
            found.append(PluginCall(impl.plugin_name, subset, firstresult))
        self._per_plugin[hook_name] = found
        return found

    def implemented(self, hook_name: str) -> bool:
        return bool(self.per_plugin(hook_name))

    # --- capabilities ---------------------------------------------------------------------

    def _registrations(
        self, hook_name: str, name_of: Callable[[Any], str]
    ) -> list[tuple[str, Any]]:
        """``(plugin name, record)`` for every record registered through ``hook_name``.

        Each plugin is called through its own caller so that a record is known by its plugin;
        a name registered twice is a startup error naming both plugins.
        """
        found: list[tuple[str, Any]] = []
        owners: dict[str, str] = {}
        for plugin in self.per_plugin(hook_name):

            def register(record: Any, _plugin: str = plugin.plugin_name) -> None:
                name = name_of(record)
                if name in owners:
                    raise PluginConfigError(
                        f"{hook_name}: {name!r} is registered by both plugin {owners[name]!r} "
                        f"and plugin {_plugin!r}; uninstall or block one of them "
                        f"(SIGNALSMITH_BLOCK_PLUGINS)"
                    )
                owners[name] = _plugin
                found.append((_plugin, record))

            plugin(register=register)
        return found

    def sinks(self) -> list[Sink]:
        """Every destination and warehouse sink, stamped with its kind and plugin."""
        sinks: list[Sink] = []
        owners: dict[str, str] = {}
        for hook_name, kind in (
            ("register_destinations", "destination"),
            ("register_warehouses", "warehouse"),
        ):
            for plugin_name, sink in self._registrations(hook_name, lambda s: s.name):
                if sink.name in owners:
                    raise PluginConfigError(
                        f"sink {sink.name!r} is registered by both plugin {owners[sink.name]!r} "
                        f"and plugin {plugin_name!r}"
                    )
                owners[sink.name] = plugin_name
                sinks.append(msgspec.structs.replace(sink, plugin=plugin_name, kind=kind))
        return sinks

    def transform_types(self) -> dict[str, TransformType]:
        """Every transform type by name, stamped with the plugin that registered it."""
        return {
            kind.name: msgspec.structs.replace(kind, plugin=plugin_name)
            for plugin_name, kind in self._registrations("register_transforms", lambda t: t.name)
        }

    def destination_types(self) -> dict[str, DestinationType]:
        """Every destination type by name, stamped with its plugin, which must deliver them."""
        found: dict[str, DestinationType] = {}
        for plugin_name, kind in self._registrations(
            "register_destination_types", lambda t: t.name
        ):
            delivering = {plugin.plugin_name for plugin in self.per_plugin("deliver_events")}
            if plugin_name not in delivering:
                raise PluginConfigError(
                    f"plugin {plugin_name!r} registers destination type {kind.name!r} but "
                    "implements no deliver_events hook"
                )
            try:
                check_default_mappings(kind.mappings)
            except MappingInvalid as error:
                raise PluginConfigError(
                    f"plugin {plugin_name!r}: destination type {kind.name!r} has an invalid "
                    f"default mapping: {error}"
                ) from None
            found[kind.name] = msgspec.structs.replace(kind, plugin=plugin_name)
        return found

    def workspace_sections(self) -> dict[str, WorkspaceSection]:
        """Every plugin-owned part of the workspace document by section name.

        A section or source field name registered twice, or one the core itself uses, is a
        ``PluginConfigError`` naming the plugins.
        """
        sections: dict[str, WorkspaceSection] = {}
        field_owners: dict[str, str] = {}
        for plugin_name, section in self._registrations(
            "register_workspace_sections", lambda s: s.name
        ):
            if section.name in CORE_SECTIONS:
                raise PluginConfigError(
                    f"plugin {plugin_name!r} registers workspace section {section.name!r}, "
                    "a name the core uses"
                )
            field = section.source_field
            if field is not None:
                if field in CORE_SOURCE_FIELDS:
                    raise PluginConfigError(
                        f"plugin {plugin_name!r} registers source field {field!r}, a name the "
                        "core uses"
                    )
                if field in field_owners:
                    raise PluginConfigError(
                        f"source field {field!r} is registered by both plugin "
                        f"{field_owners[field]!r} and plugin {plugin_name!r}"
                    )
                field_owners[field] = plugin_name
            sections[section.name] = msgspec.structs.replace(section, plugin=plugin_name)
        return sections

    def routes(self) -> list[Any]:
        handlers: list[Any] = []
        self.pm.hook.register_routes(register=handlers.append)
        return handlers

    def admin_routes(self) -> list[Any]:
        handlers: list[Any] = []
        self.pm.hook.register_admin_routes(register=handlers.append)
        return handlers

    def add_commands(self, cli: click.Group) -> None:
        self.pm.hook.register_commands(cli=cli)

    # --- lifecycle ------------------------------------------------------------------------

    async def startup(self, runtime: Any) -> None:
        """Every ``startup``, in plugin order; the first that raises stops the process."""
        for plugin in self.per_plugin("startup"):
            try:
                await resolve(plugin(runtime=runtime))
            except Exception as error:
                raise PluginFailed(plugin.plugin_name, "startup") from error

    async def shutdown(self, runtime: Any) -> None:
        """Every ``shutdown``, each in its own try: one that raises is logged."""
        for plugin in self.per_plugin("shutdown"):
            try:
                await resolve(plugin(runtime=runtime))
            except Exception:
                log.exception("plugin %s failed in shutdown", plugin.plugin_name)

    async def embedded_defaults(self, runtime: Any) -> dict[str, str]:
        found: dict[str, str] = {}
        for result in self.pm.hook.embedded_defaults(runtime=runtime):
            found.update(await resolve(result) or {})
        return found

    # --- collector decisions -----------------------------------------------------------------

    async def _first_answer(
        self, hook_name: str, errors_pass: tuple[type[BaseException], ...], **kwargs: Any
    ) -> Any:
        """pluggy's firstresult, awaiting each answer: the first non-None wins, and later
        plugins are not called. ``errors_pass`` are raised as they are (Redis being down is
        not the plugin's fault); anything else becomes ``PluginFailed``."""
        for plugin in self.per_plugin(hook_name):
            try:
                answer = await resolve(plugin(**kwargs))
            except errors_pass:
                raise
            except Exception as error:
                raise PluginFailed(plugin.plugin_name, hook_name) from error
            if answer is not None:
                return answer
        return None

    async def authenticate(
        self,
        credentials: Credentials,
        runtime: Any,
        *,
        errors_pass: tuple[type[BaseException], ...] = (),
    ) -> Source | None:
        return await self._first_answer(
            "authenticate", errors_pass, credentials=credentials, runtime=runtime
        )

    async def admit_events(
        self,
        source: Source,
        count: int,
        path: str,
        runtime: Any,
        *,
        errors_pass: tuple[type[BaseException], ...] = (),
    ) -> Refusal | None:
        return await self._first_answer(
            "admit_events", errors_pass, source=source, count=count, path=path, runtime=runtime
        )

    # --- worker ---------------------------------------------------------------------------

    def delivery(self, sink: Sink) -> PluginCall:
        """The ``deliver_events``/``write_events`` caller of the plugin that registered ``sink``."""
        hook_name = "deliver_events" if sink.kind == "destination" else "write_events"
        for plugin in self.per_plugin(hook_name):
            if plugin.plugin_name == sink.plugin:
                return plugin
        raise PluginConfigError(
            f"plugin {sink.plugin!r} registers {sink.kind} {sink.name!r} but implements no "
            f"{hook_name} hook"
        )

    # --- observers ------------------------------------------------------------------------

    @property
    def has_observers(self) -> bool:
        return self.implemented("observe_outcomes")

    def lean_observers(self, runtime: Any) -> frozenset[str]:
        """The observers (by plugin name) whose ``wants_routine_outcomes`` returned False.

        Asked once per process: a plugin that fails to answer is logged and hears everything.
        """
        if self._lean is None:
            lean: set[str] = set()
            for plugin in self.per_plugin("wants_routine_outcomes"):
                try:
                    if plugin(runtime=runtime) is False:
                        lean.add(plugin.plugin_name)
                except Exception:
                    log.exception("plugin %s failed in wants_routine_outcomes", plugin.plugin_name)
            self._lean = frozenset(lean)
        return self._lean

    async def observe(
        self, outcomes: list[Outcome], runtime: Any, lean: list[Outcome] | None = None
    ) -> None:
        """Tell every observer; one that fails is logged and the others still run.

        With ``lean``, the observers that declined the routine path (``lean_observers``) are
        told ``lean`` instead of ``outcomes``. An observer is not called with an empty list.
        """
        declined = self._lean if lean is not None and self._lean else frozenset()
        for plugin in self.per_plugin("observe_outcomes"):
            told = lean if plugin.plugin_name in declined else outcomes
            if not told:
                continue
            try:
                await resolve(plugin(outcomes=told, runtime=runtime))
            except Exception:
                log.exception("observer %s failed", plugin.plugin_name)


def trace_hooks(pm: pluggy.PluginManager, write: Callable[[str], None] | None = None) -> None:
    """Log every hook call and its result through pluggy's own tracing."""
    trace_log = logging.getLogger("signalsmith.hooks.trace")
    pm.trace.root.setwriter(write or (lambda message: trace_log.info("%s", message.rstrip())))
    pm.enable_tracing()
