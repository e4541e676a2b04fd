"""The hook implementations of the contracts plugin; this module is the registered plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from signalsmith import Event, Source, StageResult, WorkspaceSection, hookimpl
from signalsmith_contracts.section import SECTION, BuiltContracts, workspace_section
from signalsmith_contracts.stage import run_stage
from signalsmith_contracts.store import ContractsStore, violations_maxlen

if TYPE_CHECKING:
    import click

    from signalsmith import Runtime

NAME = "contracts"


class ContractsState:
    """What this plugin keeps per process: its Redis store and, where events are delivered,
    the forwarder of ``Violation Generated`` events."""

    def __init__(self, store: ContractsStore) -> None:
        self.store = store
        self.forwarder: Any = None


@hookimpl
def register_workspace_sections(register: Callable[[WorkspaceSection], None]) -> None:
    register(workspace_section())


@hookimpl
async def startup(runtime: Runtime) -> None:
    state = ContractsState(ContractsStore(runtime, violations_maxlen()))
    runtime.state[NAME] = state
    if runtime.delivers:
        from signalsmith_contracts.forwarding import ViolationForwarder

        state.forwarder = ViolationForwarder(runtime, state.store)
        state.forwarder.start()


@hookimpl
async def shutdown(runtime: Runtime) -> None:
    state = runtime.state.pop(NAME, None)
    if isinstance(state, ContractsState) and state.forwarder is not None:
        await state.forwarder.stop()


@hookimpl
async def validate_events(
    source: Source, events: list[Event], runtime: Runtime
) -> StageResult | None:
    pipeline = source.pipeline
    if pipeline is None:
        return None
    built = pipeline.sections.get(SECTION)
    if not isinstance(built, BuiltContracts) or source.id not in built.enforcers:
        return None
    state = runtime.attached(NAME, ContractsState)
    return await run_stage(source, events, built, state.store, observed=runtime.hooks.has_observers)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from signalsmith_contracts.cli import contracts

    cli.add_command(contracts)


@hookimpl
def register_admin_routes(register: Callable[[Any], None]) -> None:
    from signalsmith_contracts.admin_routes import routes

    for route in routes():
        register(route)
