"""The hook implementations of the consent plugin; this module is the registered plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from signalsmith import Event, Source, StageResult, WorkspaceSection, hookimpl
from signalsmith_consent.memory import ConsentMemory
from signalsmith_consent.section import BuiltConsent, built_for, workspace_section
from signalsmith_consent.settings import DEFAULT_REMEMBER_DAYS
from signalsmith_consent.stage import ConsentStage, Need, sink_needs

if TYPE_CHECKING:
    import click

    from signalsmith import Runtime

NAME = "consent"


class ConsentState:
    """What this plugin keeps per process: the Redis memory, and the sinks each source feeds
    in the workspace version in use (resolved once per version and source)."""

    def __init__(self, memory: ConsentMemory) -> None:
        self.memory = memory
        self._needs_of: BuiltConsent | None = None
        self._needs: dict[str, tuple[Need, ...]] = {}

    def needs(self, source: Source, built: BuiltConsent, runtime: Runtime) -> tuple[Need, ...]:
        if built is not self._needs_of:
            self._needs_of, self._needs = built, {}
        needs = self._needs.get(source.id)
        if needs is None:
            needs = self._needs[source.id] = sink_needs(source, built, runtime.sinks)
        return needs


def memory_of(runtime: Runtime) -> ConsentMemory:
    return ConsentMemory(
        runtime.redis, runtime.settings.key_prefix, round(DEFAULT_REMEMBER_DAYS * 86_400)
    )


@hookimpl
def register_workspace_sections(register: Callable[[WorkspaceSection], None]) -> None:
    register(workspace_section())


@hookimpl
def startup(runtime: Runtime) -> None:
    runtime.state[NAME] = ConsentState(memory_of(runtime))


@hookimpl
def shutdown(runtime: Runtime) -> None:
    runtime.state.pop(NAME, None)


@hookimpl
async def apply_consent(
    source: Source, events: list[Event], runtime: Runtime
) -> StageResult | None:
    state = runtime.attached(NAME, ConsentState)
    built = built_for(source.pipeline.sections if source.pipeline is not None else None)
    stage = ConsentStage(
        source,
        built,
        state.needs(source, built, runtime),
        state.memory,
        observed=runtime.hooks.has_observers,
    )
    return await stage.run(events)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from signalsmith_consent.cli import consent

    cli.add_command(consent)


@hookimpl
def register_admin_routes(register: Callable[[Any], None]) -> None:
    from signalsmith_consent.admin_routes import routes

    for route in routes():
        register(route)
