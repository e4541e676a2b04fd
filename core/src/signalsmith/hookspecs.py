"""Every hook a SignalSmith plugin can implement, in pipeline order.

Plugins write ``from signalsmith import hookimpl`` and implement any of these by name, declaring
only the arguments they use. Every hook that runs in a process (all but ``register_*``) may take
``runtime``, where a plugin finds the state it attached in ``startup``. Stage, lifecycle and
observer hooks may be ``async``; the core awaits them. ``register_*`` hooks are called
synchronously at startup and must not be ``async``. The core calls them all through
``signalsmith.hooks.Hooks``. `docs/plugin-hooks.md` documents each one, and a test fails when a
hook here is missing from it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

from signalsmith.model import Event
from signalsmith.records import (
    BannerValue,
    Credentials,
    DeliveryReport,
    DestinationType,
    Outcome,
    Refusal,
    Sink,
    Source,
    StageResult,
    TransformType,
    WorkspaceSection,
)

if TYPE_CHECKING:
    import click

    from signalsmith.runtime import Runtime

hookspec = pluggy.HookspecMarker("signalsmith")


# --- capabilities -------------------------------------------------------------------------


@hookspec
def register_destinations(register: Callable[[Sink], None]) -> None:
    """Called once at startup to register destination sinks (kind ``"destination"``).

    Call ``register(Sink(name=...))`` for each destination this plugin delivers to; each gets its
    own consumer group and dead-letter stream. A name registered twice is a startup error naming
    both plugins.
    """


@hookspec
def register_warehouses(register: Callable[[Sink], None]) -> None:
    """Called once at startup to register warehouse sinks (kind ``"warehouse"``).

    Same contract as ``register_destinations``; the worker calls ``write_events`` for them.
    """


@hookspec
def register_transforms(register: Callable[[TransformType], None]) -> None:
    """Called once at startup to register the transform types this plugin provides.

    Call ``register(TransformType(name=..., settings=SettingsStruct, build=...))``. Configuration
    declares named instances of a type; the core checks each instance's settings against the
    Struct and calls ``build(settings)`` once for the function that instance runs, which follows
    the ``transform_events`` return contract. Duplicate type names are a startup error.
    """


@hookspec
def register_destination_types(register: Callable[[DestinationType], None]) -> None:
    """Called once at startup to register the destination types this plugin delivers to.

    Call ``register(DestinationType(name=..., settings=SettingsStruct))``. The workspace declares
    named instances of a type under ``destinations:``; each instance is a ``Sink`` named after
    it, with its checked settings, and the worker calls this plugin's ``deliver_events`` with its
    batches (so the plugin must implement it). Duplicate type names are a startup error.
    """


@hookspec
def register_workspace_sections(register: Callable[[WorkspaceSection], None]) -> None:
    """Called once at startup to register the parts of the workspace document this plugin owns.

    Call ``register(WorkspaceSection(name=..., settings=..., source_field=...,
    source_settings=...))``: a top-level section (``contracts:``) and/or a field every source may
    set (``sources.<name>.contract``), each checked against its type when a document is applied.
    A name registered twice, or one the core uses, is a startup error.
    """


@hookspec
def register_routes(register: Callable[[Any], None]) -> None:
    """Called when the HTTP app is built, to add Litestar route handlers or routers.

    Call ``register(handler)`` with anything ``litestar.Litestar(route_handlers=[...])`` takes.
    A handler that declares a ``runtime: Runtime`` parameter receives the process's runtime.
    """


@hookspec
def register_admin_routes(register: Callable[[Any], None]) -> None:
    """Called when the HTTP app is built, to add endpoints under ``/api/v1/admin``.

    Call ``register(handler)`` with Litestar route handlers whose paths are relative to
    ``/api/v1/admin``. Every one is behind the admin-token guard: a request without
    ``SIGNALSMITH_ADMIN_TOKEN`` (as a Bearer token) gets 401 before the handler runs. A handler
    that declares a ``runtime: Runtime`` parameter receives the process's runtime (a Litestar
    dependency the core provides to every route).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Called when the ``signalsmith`` CLI is built, to add commands to it.

    Add commands with ``@cli.command()`` or ``cli.add_command(...)``. Return value is ignored.
    """


# --- lifecycle ----------------------------------------------------------------------------


@hookspec
def startup(runtime: Runtime) -> Awaitable[None] | None:
    """Called once per process when a collector, worker or CLI command starts.

    ``runtime.role`` says which (``"collector"``, ``"worker"``, ``"cli"``); ``runtime.redis`` is
    the shared async Redis client. Open connections and warm caches here. A plugin that raises
    stops the process from starting, with its error.
    """


@hookspec
def shutdown(runtime: Runtime) -> Awaitable[None] | None:
    """Called once per process on orderly shutdown; close what ``startup`` opened.

    Every implementation is called even if one raises.
    """


# --- collector stages, in order -------------------------------------------------------------


@hookspec(firstresult=True)
def authenticate(
    credentials: Credentials, runtime: Runtime
) -> Source | Awaitable[Source | None] | None:
    """Called for every collector request to turn the offered write keys into a Source.

    Return the ``Source`` the first known key belongs to, or None if this plugin knows none of
    them (the next authenticator is asked; if none answers, the request gets 401). The first
    answer wins, an awaited one too, and later authenticators are not called. Raise to fail the
    request with a 500.
    """


@hookspec(firstresult=True)
def admit_events(
    source: Source, count: int, path: str, runtime: Runtime
) -> Refusal | Awaitable[Refusal | None] | None:
    """Called once per authenticated request, before the body's messages are checked.

    ``count`` is the number of messages in the request. Return None to admit it, or a ``Refusal``
    to answer 429 with its ``retry_after`` (or its other 4xx ``status``, without Retry-After);
    nothing from the request is buffered. The first refusal wins.
    """


@hookspec
def validate_events(
    source: Source, events: list[Event], runtime: Runtime
) -> StageResult | Awaitable[StageResult | None] | None:
    """Called once per request with the normalised events, to check them against contracts.

    Return None to leave the batch unchanged, or a ``StageResult`` whose ``events`` continue
    (flagged or with properties omitted), whose ``dropped`` were blocked, and whose ``outcomes``
    record violations. Implementations run one after another, each on the previous one's output.
    """


@hookspec
def transform_events(
    source: Source, events: list[Event], runtime: Runtime
) -> StageResult | Awaitable[StageResult | None] | None:
    """Called once per request after validation, to rename, enrich, edit or filter events.

    Same return contract as ``validate_events``; an event left out of ``events`` must appear in
    ``dropped`` with its reason.
    """


@hookspec
def apply_consent(
    source: Source, events: list[Event], runtime: Runtime
) -> StageResult | Awaitable[StageResult | None] | None:
    """Called once per request after transforms, to stamp or drop events by consent category.

    Same return contract as ``validate_events``.
    """


# --- worker stages --------------------------------------------------------------------------


@hookspec
def deliver_events(
    destination: Sink, events: list[Event], runtime: Runtime
) -> DeliveryReport | Awaitable[DeliveryReport | None] | None:
    """Called by the worker with a batch for one destination this plugin registered.

    Only the plugin that registered ``destination`` is called, and only with the events its
    ``routing`` takes. Return None (or resolve to it) to have the whole batch acknowledged, or a
    ``DeliveryReport`` naming the events to retry and the events rejected (dead-lettered at
    once), by ``message_id``. Raise ``SinkError`` (optionally with ``retry_after``) to have the
    whole batch retried with backoff, or ``PermanentSinkError`` to dead-letter it at once; any
    other exception is retried like ``SinkError``. Events may be redelivered after a crash:
    deliver idempotently by ``message_id`` where the destination allows it.
    """


@hookspec
def write_events(
    warehouse: Sink, events: list[Event], runtime: Runtime
) -> DeliveryReport | Awaitable[DeliveryReport | None] | None:
    """Called by the worker with a batch for one warehouse this plugin registered.

    Same contract as ``deliver_events``.
    """


# --- observers ------------------------------------------------------------------------------


@hookspec
def observe_outcomes(outcomes: list[Outcome], runtime: Runtime) -> Awaitable[None] | None:
    """Called after every stage, and on every refusal, with what happened to each event
    (accepted, rejected, violation, transformed, dropped, buffered, skipped, delivered, retried,
    dead-lettered, ...), each outcome carrying the event (or, before there is one, its raw
    payload) and its source.

    Observers run after the stage's work and cannot change it; one that raises is logged and the
    others still run. Keep it cheap: it runs on the request path for collector stages.
    """


@hookspec
def wants_routine_outcomes(runtime: Runtime) -> bool | None:
    """Called once per process, when the collector's pipeline is built, for plugins that
    implement ``observe_outcomes``: whether this plugin needs an outcome per event on the
    routine path (accepted at normalisation, then buffered or a duplicate).

    Return False to hear, from the collector, only what is not routine (rejections, refusals,
    stage outcomes and drops, duplicates, and the event as received for each event a stage
    replaced or dropped) plus one batch-level outcome per request and stage (``message_id``
    None, ``count`` events): the routine events are then learnt elsewhere (a sink of the plugin
    reads them from the buffer), and the request path neither builds their outcomes nor keeps
    them past the buffer write. Return None or True (or leave it unimplemented) to hear of
    every event at every stage.
    """


# --- embedded defaults ----------------------------------------------------------------------


@hookspec
def embedded_defaults(
    runtime: Runtime,
) -> dict[str, BannerValue] | Awaitable[dict[str, BannerValue]] | None:
    """Called once by ``signalsmith serve`` on the embedded defaults, before the collector starts.

    Prepare what a developer needs to send a first event (a development write key), persisting
    it under ``runtime.settings.data_dir``, and return ``{name: value}`` for the start banner: a
    ``Secret`` (printed only by the start that created it, later where it is kept), a
    ``CliCommand`` (printed runnable), or a plain string. The name ``"write_key"`` is used in
    the printed ``curl`` example. Return None when there is nothing to add.
    """
