"""The hook implementations of the debugger plugin; this module is the registered plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from signalsmith import Event, Outcome, Sink, hookimpl
from signalsmith_debugger.config import DebuggerConfig
from signalsmith_debugger.recorder import SINK_BATCH_EVENTS, SINK_NAME
from signalsmith_debugger.state import NAME, DebuggerState

if TYPE_CHECKING:
    import click

    from signalsmith import Runtime


@hookimpl
async def startup(runtime: Runtime) -> None:
    state = DebuggerState(runtime, DebuggerConfig.from_env())
    runtime.state[NAME] = state
    await state.start()


@hookimpl
async def shutdown(runtime: Runtime) -> None:
    state = runtime.state.pop(NAME, None)
    if isinstance(state, DebuggerState):
        await state.stop()


@hookimpl
def embedded_defaults(runtime: Runtime) -> dict[str, str]:
    # A line of the start banner: where the page is.
    return {"debugger": f"{runtime.settings.local_url}/debugger/ (open it with the admin token)"}


@hookimpl
def observe_outcomes(outcomes: list[Outcome], runtime: Runtime) -> None:
    # On the request path: the recorder encodes the list and queues it (it writes it later).
    state = runtime.state.get(NAME)
    if state is not None and state.recorder is not None:
        state.recorder.take(outcomes)


@hookimpl
def wants_routine_outcomes() -> bool:
    # Buffered events are recorded by the worker, through the sink below: the collector's
    # requests report only what is not routine, and a count.
    return False


@hookimpl
def register_warehouses(register: Callable[[Sink], None]) -> None:
    # Its own consumer group on the event stream: every buffered event, read by the worker.
    register(
        Sink(
            name=SINK_NAME,
            batch_size=SINK_BATCH_EVENTS,
            max_wait_seconds=DebuggerConfig.from_env().flush_seconds,
            max_attempts=None,
        )
    )


@hookimpl
def write_events(events: list[Event], runtime: Runtime) -> None:
    # In the worker, off the request path: queued for the recorder's next flush.
    state = runtime.state.get(NAME)
    if state is not None and state.recorder is not None:
        state.recorder.take_buffered(events)


@hookimpl
def register_routes(register: Callable[[Any], None]) -> None:
    from signalsmith_debugger.routes import api_router, page, static

    register(page)
    register(static)
    register(api_router())


@hookimpl
def register_admin_routes(register: Callable[[Any], None]) -> None:
    from signalsmith_debugger.routes import admin_routes

    for route in admin_routes():
        register(route)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from signalsmith_debugger.cli import debugger, trace

    cli.add_command(trace)
    cli.add_command(debugger)
