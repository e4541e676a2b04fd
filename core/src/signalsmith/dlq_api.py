"""The dead-letter endpoints of the admin API, under ``/api/v1/admin/dlq``.

The same operations as ``signalsmith dlq``, behind the admin-token guard; `docs/worker.md`
("Dead letters and replay") lists them. Every error is ``{code, message}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.params import Body, PathParameter, QueryParameter

from signalsmith.deadletters import (
    DEFAULT_REPLAY_RATE,
    Letter,
    LetterQuery,
    Moved,
    ReplayProgress,
    SinkLetters,
    drop_letters,
    get_letter,
    list_letters,
    parse_moment,
    replay_backlog,
    replay_letters,
    replay_progress,
    sinks_with_letters,
)
from signalsmith.di import RuntimeDependency

SinkName = Annotated[str, PathParameter(description="the sink (destination instance) name")]
EntryId = Annotated[str, PathParameter(description="a dead-letter entry id")]


class Selection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which dead-lettered events (as the CLI's options): times are ISO-8601 or ago (``2h``)."""

    since: str | None = None
    until: str | None = None
    event: str | None = None
    error: str | None = None
    ids: list[str] = []


class ReplayBody(Selection, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Events per second the worker may deliver (0: no limit).
    rate: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_REPLAY_RATE
    keep: bool = False


class ProgressBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``replay_entries`` a replay answered with."""

    replay_entries: list[tuple[str, int]]


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str


class BadSelection(ValueError):
    pass


def _problem(status: int, code: str, message: str) -> Response[Any]:
    return Response(ErrorBody(code=code, message=message), status_code=status)


def _moment(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_moment(value)
    except ValueError as error:
        raise BadSelection(f"{name}: {error}") from None


def _query(selection: Selection) -> LetterQuery:
    return LetterQuery(
        since=_moment(selection.since, "since"),
        until=_moment(selection.until, "until"),
        event=selection.event,
        error=selection.error,
        ids=tuple(selection.ids),
    )


class DeadLetterController(Controller):
    path = "/dlq"
    tags = ["admin", "dead letters"]

    @get("/", summary="Sinks with dead letters: entries, events, oldest and newest")
    async def sinks(self, runtime: RuntimeDependency) -> list[SinkLetters]:
        return await sinks_with_letters(runtime.redis, runtime.settings.key_prefix)

    @get("/{sink:str}", summary="A sink's dead-letter entries, oldest first")
    async def entries(
        self,
        runtime: RuntimeDependency,
        sink: SinkName,
        since: Annotated[str | None, QueryParameter()] = None,
        until: Annotated[str | None, QueryParameter()] = None,
        event: Annotated[str | None, QueryParameter()] = None,
        error: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
    ) -> Response[Any]:
        try:
            query = _query(Selection(since=since, until=until, event=event, error=error))
        except BadSelection as problem:
            return _problem(400, "invalid_query", str(problem))
        found: list[Letter] = await list_letters(
            runtime.redis, runtime.settings.key_prefix, sink, query, limit=limit, events=True
        )
        return Response(found)

    @get("/{sink:str}/entries/{entry_id:str}", summary="One entry with its events and reasons")
    async def entry(
        self, runtime: RuntimeDependency, sink: SinkName, entry_id: EntryId
    ) -> Response[Any]:
        letter = await get_letter(runtime.redis, runtime.settings.key_prefix, sink, entry_id)
        if letter is None:
            return _problem(404, "not_found", f"no dead-letter entry {entry_id} for {sink}")
        return Response(letter)

    @delete("/{sink:str}/entries/{entry_id:str}", summary="Delete one entry", status_code=200)
    async def delete_entry(
        self, runtime: RuntimeDependency, sink: SinkName, entry_id: EntryId
    ) -> Response[Any]:
        moved = await drop_letters(
            runtime.redis, runtime.settings.key_prefix, sink, LetterQuery(ids=(entry_id,))
        )
        if not moved.entries:
            return _problem(404, "not_found", f"no dead-letter entry {entry_id} for {sink}")
        return Response(moved)

    @post(
        "/{sink:str}/replay",
        summary="Send the selected events to this sink again (its replay stream)",
        status_code=202,
    )
    async def replay(
        self, runtime: RuntimeDependency, sink: SinkName, data: Annotated[ReplayBody, Body()]
    ) -> Response[Any]:
        try:
            query = _query(data)
        except BadSelection as problem:
            return _problem(400, "invalid_query", str(problem))
        moved: Moved = await replay_letters(
            runtime.redis,
            runtime.settings.key_prefix,
            sink,
            query,
            rate=data.rate or None,
            keep=data.keep,
        )
        return Response(moved, status_code=202)

    @post("/{sink:str}/replay/progress", summary="How far a replay got", status_code=200)
    async def progress(
        self, runtime: RuntimeDependency, sink: SinkName, data: Annotated[ProgressBody, Body()]
    ) -> ReplayProgress:
        return await replay_progress(
            runtime.redis, runtime.settings.key_prefix, sink, data.replay_entries
        )

    @get("/{sink:str}/replay", summary="The sink's replay stream: entries waiting and in flight")
    async def backlog(self, runtime: RuntimeDependency, sink: SinkName) -> dict[str, int]:
        return await replay_backlog(runtime.redis, runtime.settings.key_prefix, sink)

    @post("/{sink:str}/drop", summary="Delete the selected events for good", status_code=200)
    async def drop(
        self, runtime: RuntimeDependency, sink: SinkName, data: Annotated[Selection, Body()]
    ) -> Response[Any]:
        try:
            query = _query(data)
        except BadSelection as problem:
            return _problem(400, "invalid_query", str(problem))
        return Response(await drop_letters(runtime.redis, runtime.settings.key_prefix, sink, query))


def dead_letter_routes() -> list[Any]:
    return [DeadLetterController]
