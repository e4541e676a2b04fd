"""The collector's ordered pipeline, independent of HTTP: a request in, a verdict out.

Order (`docs/plugin-hooks.md`): parse -> authenticate -> admit -> normalise -> validate ->
transform -> consent -> dedupe and buffer, each a step of ``Pipeline.ingest``. Stage hooks are
called once per request with the whole batch. A request is ``Accepted`` only after its events
are in Redis; anything that stops it is a ``Refused`` saying why, in words of the pipeline
(``unauthenticated``, ``rate_limited``, ``unavailable``, ...): the HTTP edge
(``signalsmith.collector.ingest``) decides the status. Observers hear of every stage as it
happens, and of every refusal, each outcome with the event (or the message's raw JSON) and its
source; those that declined the routine path (``wants_routine_outcomes``) hear only what is not
routine, and a count per request and stage, so that the routine path costs them nothing per
event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import msgspec
from redis.exceptions import RedisError

from signalsmith.buffer import BacklogFull, BufferUnavailable, EventBuffer
from signalsmith.hooks import PluginCall, PluginFailed, resolve
from signalsmith.model import Event
from signalsmith.normalize import NormalisedBatch, normalise_messages
from signalsmith.parsing import ParsedRequest, RequestError, offered_write_keys, parse_request
from signalsmith.records import (
    Credentials,
    Drop,
    Outcome,
    Refusal,
    Rejection,
    Source,
    StageResult,
)
from signalsmith.runtime import Runtime
from signalsmith.workspace import UnknownSource

log = logging.getLogger("signalsmith.pipeline")

GATE_STAGES = ("validate_events", "transform_events", "apply_consent")
STAGE_NAMES = {
    "validate_events": "validate",
    "transform_events": "transform",
    "apply_consent": "consent",
}


# --- what goes in and what comes out ------------------------------------------------------------


class IngestRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One ingestion request as the HTTP edge read it."""

    body: bytes
    path: str
    # The type the path implies (`/v1/track`), None where the body says (`/v1/batch`).
    path_type: str | None
    # True: the body must be a batch; False: one message; None: either (`/api/v1/events`).
    batch: bool | None
    authorization: bytes | None = None
    client_ip: str | None = None
    # Browser paths stamp the client's address as context.ip.
    stamp_ip: bool = False


class DroppedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event a stage removed on purpose, by its position in the request."""

    index: int
    message_id: str
    stage: str
    reason: str
    # What the stage said beyond the reason (consent: the categories not granted).
    detail: str = ""


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The request's events are buffered: how many, and what became of the others."""

    accepted: int
    duplicates: int = 0
    rejected: list[Rejection] = []
    dropped: list[DroppedEvent] = []


RefusalReason = Literal[
    "invalid",  # the request cannot be read
    "too_large",  # over a size limit: split it
    "unauthenticated",  # no write key, or none known
    "forbidden",  # a key of a source the workspace does not list
    "rate_limited",  # over the key's plan: wait retry_after
    "unavailable",  # Redis or the backlog cannot take it now: wait retry_after
    "failed",  # a plugin on the request path failed
]


class Refused(msgspec.Struct, frozen=True, kw_only=True):
    """Nothing from the request was buffered, and why.

    ``status`` is set when a plugin's own refusal named its HTTP status (``Refusal.status``).
    """

    reason: RefusalReason
    stage: str
    code: str
    message: str
    retry_after: int | None = None
    reset_after: int | None = None
    status: int | None = None


Verdict = Accepted | Refused


class _Refusal(Exception):
    """Stops a request at the step that raised it, carrying the verdict."""

    def __init__(self, verdict: Refused) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


class UnknownTransform(Exception):
    """A source's configuration names a transform that is not configured."""


# --- the steps of one request -------------------------------------------------------------------


class _Step(msgspec.Struct, frozen=True, kw_only=True):
    """One link of the validate -> transform -> consent chain."""

    stage: str
    hook_name: str
    owner: str
    run: Callable[[Source, list[Event]], Any]


def _call_stage(plugin: PluginCall, runtime: Runtime, source: Source, events: list[Event]) -> Any:
    return plugin(source=source, events=events, runtime=runtime)


class _Request:
    """What one request carries from step to step."""

    __slots__ = (
        "buffered",
        "dropped",
        "duplicates",
        "events",
        "index_of",
        "message_ids",
        "normalised",
        "original_of",
        "parsed",
        "replaced",
        "source",
    )

    def __init__(self) -> None:
        self.parsed: ParsedRequest | None = None
        self.source: Source | None = None
        self.normalised: NormalisedBatch | None = None
        self.events: list[Event] = []
        # Events handed to the buffer (duplicates included).
        self.buffered = 0
        self.dropped: list[DroppedEvent] = []
        self.duplicates: list[int] = []
        # Request position by messageId, so a drop by any stage reports where it came from;
        # built on the first drop only (most requests have none).
        self.index_of: dict[str, int] = {}
        # For observers that declined the routine path: the buffered events' messageIds (the
        # events themselves are freed before the buffer's round trip), whether a stage handed
        # back a new batch, and the events as normalised by messageId (built on first need).
        self.message_ids: list[str] = []
        self.replaced = False
        self.original_of: dict[str, Event] = {}


class Pipeline:
    """Runs one request through every collector stage, calling each plugin in order."""

    def __init__(self, runtime: Runtime, buffer: EventBuffer) -> None:
        self.runtime = runtime
        self.buffer = buffer
        self.settings = runtime.settings
        self.hooks = runtime.hooks
        # Each plugin's caller is looked up once: the request path only iterates lists.
        self._hook_steps = {
            name: [
                _Step(
                    stage=STAGE_NAMES[name],
                    hook_name=name,
                    owner=f"plugin {plugin.plugin_name!r}",
                    run=partial(_call_stage, plugin, runtime),
                )
                for plugin in self.hooks.per_plugin(name)
            ]
            for name in GATE_STAGES
        }
        self._default_steps = [step for name in GATE_STAGES for step in self._hook_steps[name]]
        self._observing = self.hooks.has_observers
        # Observers that declined the routine path (`wants_routine_outcomes`) get lean lists;
        # per-event routine outcomes are built only when some other observer wants them.
        self._lean = self.hooks.lean_observers(runtime) if self._observing else frozenset()
        self._routine = self._observing and any(
            plugin.plugin_name not in self._lean
            for plugin in self.hooks.per_plugin("observe_outcomes")
        )

    async def ingest(self, request: IngestRequest) -> Verdict:
        """Every step, in order; a refusal at any step stops the request there."""
        state = _Request()
        try:
            state.parsed = self._parse(request)
            state.source = await self._authenticate(request, state.parsed)
            await self._admit(request, state.parsed, state.source)
            self._normalise(request, state)
            if self._observing:
                await self._observe_normalised(state)
            await self._run_stages(state)
            await self._buffer(state)
        except _Refusal as refusal:
            if self._observing:
                await self._observe_refusal(refusal.verdict, state)
            return refusal.verdict
        normalised = state.normalised
        assert normalised is not None
        return Accepted(
            accepted=state.buffered - len(state.duplicates),
            duplicates=len(state.duplicates),
            rejected=normalised.rejected,
            dropped=state.dropped,
        )

    # -- parse, authenticate, admit --

    def _parse(self, request: IngestRequest) -> ParsedRequest:
        settings = self.settings
        try:
            return parse_request(
                request.body,
                batch=request.batch,
                max_messages=settings.max_batch_messages,
                max_message_bytes=settings.max_message_bytes,
            )
        except RequestError as error:
            raise _refused(
                "too_large" if error.too_large else "invalid", "parse", error.code, error.message
            ) from None

    async def _authenticate(self, request: IngestRequest, parsed: ParsedRequest) -> Source:
        keys = offered_write_keys(request.authorization, parsed.write_key)
        if not keys:
            raise _refused(
                "unauthenticated",
                "authenticate",
                "missing_write_key",
                "no write key: send it as the Basic auth username, as a Bearer token, "
                "or as writeKey in the body",
            )
        credentials = Credentials(write_keys=keys, remote_addr=request.client_ip, path=request.path)
        try:
            source = await self.authenticate(credentials)
        except (RedisError, OSError) as error:
            # Redis's words stay in the log: they can name a socket path.
            log.warning("write keys cannot be checked: %s", error)
            raise self._unavailable(
                "authenticate",
                "auth_unavailable",
                "write keys cannot be checked now (Redis unreachable)",
            ) from None
        except PluginFailed as failure:
            log.exception("plugin %s failed in authenticate", failure.plugin_name)
            raise _refused(
                "failed",
                "authenticate",
                "auth_failed",
                f"plugin {failure.plugin_name!r} failed in authenticate; see server logs",
            ) from None
        except UnknownSource as error:  # a key of a source the workspace does not list
            raise _refused("forbidden", "authenticate", "unknown_source", str(error)) from None
        if source is None:
            raise _refused(
                "unauthenticated",
                "authenticate",
                "invalid_write_key",
                "write key not recognised; create one with `signalsmith keys create`",
            )
        return source

    async def _admit(self, request: IngestRequest, parsed: ParsedRequest, source: Source) -> None:
        try:
            refusal: Refusal | None = await self.hooks.admit_events(
                source,
                len(parsed.messages),
                request.path,
                self.runtime,
                errors_pass=(RedisError, OSError),
            )
        except (RedisError, OSError) as error:
            log.warning("rate limits cannot be checked: %s", error)
            raise self._unavailable(
                "admit",
                "admit_unavailable",
                "rate limits cannot be checked now (Redis unreachable)",
            ) from None
        except PluginFailed as failure:
            log.exception("plugin %s failed in admit_events", failure.plugin_name)
            raise _refused(
                "failed",
                "admit",
                "admit_failed",
                f"plugin {failure.plugin_name!r} failed in admit_events; see server logs",
            ) from None
        if refusal is None:
            return
        if refusal.status != 429:
            # Not a rate limit (a revoked key, a batch that can never fit): the plugin's own
            # status, and no Retry-After, so clients do not wait and try again.
            raise _Refusal(
                Refused(
                    reason="too_large" if refusal.status == 413 else "unauthenticated",
                    stage="admit",
                    code=refusal.reason,
                    message=refusal.message,
                    status=refusal.status,
                )
            )
        raise _Refusal(
            Refused(
                reason="rate_limited",
                stage="admit",
                code=refusal.reason,
                message=refusal.message,
                retry_after=refusal.retry_after,
                reset_after=(
                    refusal.reset_after if refusal.reset_after is not None else refusal.retry_after
                ),
            )
        )

    # -- normalise and the stages --

    def _normalise(self, request: IngestRequest, state: _Request) -> None:
        assert state.parsed is not None and state.source is not None
        state.normalised = normalise_messages(
            state.parsed,
            path_type=request.path_type,
            received_at=datetime.now(UTC),
            source_id=state.source.id,
            max_message_bytes=self.settings.max_message_bytes,
            client_ip=request.client_ip if request.stamp_ip else None,
        )
        state.events = state.normalised.events

    async def _run_stages(self, state: _Request) -> None:
        """Validate hooks, the source's transform chain, transform hooks, consent hooks."""
        source = state.source
        assert source is not None
        try:
            steps = self._steps_for(source)
        except UnknownTransform as error:
            raise _refused("failed", "transform", "unknown_transform", str(error)) from None
        for step in steps:
            if not state.events:
                return
            try:
                result: StageResult | None = await resolve(step.run(source, state.events))
            except Exception:
                log.exception("%s failed in %s", step.owner, step.hook_name)
                raise _refused(
                    "failed",
                    step.stage,
                    f"{step.stage}_failed",
                    f"{step.owner} failed in {step.hook_name}; see server logs",
                ) from None
            if result is None:
                continue
            if result.dropped:
                self._report_drops(state, step.stage, result.dropped)
            if self._observing:
                await self._observe_stage(state, step.stage, result)
            if result.events is not state.events:
                state.replaced = True
            state.events = result.events

    def _report_drops(self, state: _Request, stage: str, drops: list[Drop]) -> None:
        normalised = state.normalised
        assert normalised is not None
        if not state.index_of:
            for event, index in zip(normalised.events, normalised.indexes, strict=True):
                state.index_of.setdefault(event.message_id, index)
        state.dropped += [
            DroppedEvent(
                index=state.index_of.get(drop.event.message_id, -1),
                message_id=drop.event.message_id,
                stage=stage,
                reason=drop.reason,
                detail=drop.detail,
            )
            for drop in drops
        ]

    def _steps_for(self, source: Source) -> list[_Step]:
        """Validate hooks, the source's named transforms in its order, transform hooks, consent."""
        if source.pipeline is not None:  # the workspace's chain, built for its version
            chain = source.pipeline.transforms
            if not chain:
                return self._default_steps
            return self._with_named(
                [
                    _Step(
                        stage="transform",
                        hook_name=f"transform {transform.name!r}",
                        owner=f"plugin {transform.plugin!r}",
                        run=transform.apply,
                    )
                    for transform in chain
                ]
            )
        names = source.settings.get("transforms") or ()
        if not names:
            return self._default_steps
        configured = self.runtime.transforms
        named = []
        for name in names:
            transform = configured.get(name)
            if transform is None:
                raise UnknownTransform(
                    f"source {source.name!r} lists transform {name!r}, which is not configured "
                    f"(configured: {', '.join(sorted(configured)) or 'none'}); declare it "
                    "in SIGNALSMITH_TRANSFORMS"
                )
            named.append(
                _Step(
                    stage="transform",
                    hook_name=f"transform {name!r}",
                    owner=f"plugin {transform.plugin!r}",
                    run=transform.apply,
                )
            )
        return self._with_named(named)

    def _with_named(self, named: list[_Step]) -> list[_Step]:
        return [
            *self._hook_steps["validate_events"],
            *named,
            *self._hook_steps["transform_events"],
            *self._hook_steps["apply_consent"],
        ]

    # -- dedupe and buffer --

    async def _buffer(self, state: _Request) -> None:
        source = state.source
        assert source is not None
        if not state.events:
            return
        state.buffered = len(state.events)
        if self._lean and state.replaced:
            await self._observe_replaced(state)
        appending = self.buffer.append(source.id, state.events)
        if self._lean:
            state.message_ids = [event.message_id for event in state.events]
        if not self._routine:
            # Nothing needs the events once the buffer has encoded them: drop the references
            # so they are freed right after encoding, while still in cache, and not held
            # (thousands of objects per batch) for the whole Redis round trip. Profiled under
            # batch load, freeing them after the wait cost ~20% of the CPU.
            state.events = []
            state.parsed = None
            if state.normalised is not None:
                state.normalised.events = []
        try:
            state.duplicates = await appending
        except BacklogFull as error:
            raise _refused(
                "unavailable", "buffer", "backlog_full", str(error), retry_after=error.retry_after
            ) from None
        except BufferUnavailable as error:
            raise _refused(
                "unavailable",
                "buffer",
                "buffer_unavailable",
                str(error),
                retry_after=error.retry_after,
            ) from None
        if not self._observing:
            return
        duplicate_set = set(state.duplicates)
        outcomes = [
            Outcome(
                stage="buffer",
                status="duplicate" if position in duplicate_set else "buffered",
                message_id=event.message_id,
                source_id=source.id,
                event=event,
            )
            for position, event in enumerate(state.events)
        ]
        lean: list[Outcome] | None = None
        if self._lean:
            buffered = state.buffered - len(state.duplicates)
            # The batch-level outcome first, then each duplicate.
            lean = (
                [
                    Outcome(
                        stage="buffer",
                        status="buffered",
                        message_id=None,
                        source_id=source.id,
                        count=buffered,
                    )
                ]
                if buffered
                else []
            )
            lean += [
                Outcome(
                    stage="buffer",
                    status="duplicate",
                    message_id=state.message_ids[position],
                    source_id=source.id,
                )
                for position in state.duplicates
            ]
        await self._tell(outcomes, lean)

    # -- shared with the HTTP app --

    async def authenticate(self, credentials: Credentials) -> Source | None:
        """The Source of the first authenticator that knows one of the offered keys.

        A Redis error passes as it is; any other failure is ``PluginFailed``; a source the
        workspace does not list is ``UnknownSource``.
        """
        source = await self.hooks.authenticate(
            credentials, self.runtime, errors_pass=(RedisError, OSError)
        )
        # The source as the workspace version in use resolves it (raises UnknownSource).
        return source if source is None else self.runtime.workspace.attach(source)

    async def observe(self, outcomes: list[Outcome]) -> None:
        """Tell every observer; one that fails is logged and the others still run."""
        await self.hooks.observe(outcomes, self.runtime)

    # -- observers --

    async def _tell(self, outcomes: list[Outcome], lean: list[Outcome] | None) -> None:
        """``outcomes`` to the observers of the routine path, ``lean`` to those that declined
        it (``wants_routine_outcomes``)."""
        await self.hooks.observe(outcomes, self.runtime, lean if self._lean else None)

    def _original(self, state: _Request, message_id: str) -> Event | None:
        """The event of ``message_id`` as normalisation made it."""
        if not state.original_of:
            normalised = state.normalised
            assert normalised is not None
            state.original_of = {event.message_id: event for event in normalised.events}
        return state.original_of.get(message_id)

    async def _observe_replaced(self, state: _Request) -> None:
        """For the lean observers: each event a stage replaced, as it was received (the
        buffer holds it as the stages left it)."""
        normalised, source = state.normalised, state.source
        assert normalised is not None and source is not None
        kept = {id(event) for event in state.events}
        dropped = {drop.message_id for drop in state.dropped}
        await self.hooks.observe(
            [],
            self.runtime,
            [
                Outcome(
                    stage="normalise",
                    status="accepted",
                    message_id=event.message_id,
                    source_id=source.id,
                    event=event,
                )
                for event in normalised.events
                if id(event) not in kept and event.message_id not in dropped
            ],
        )

    def _unavailable(self, stage: str, code: str, message: str) -> _Refusal:
        return _refused(
            "unavailable", stage, code, message, retry_after=self.settings.retry_after_seconds
        )

    async def _observe_normalised(self, state: _Request) -> None:
        """Each message's fate at normalisation: accepted (with its event) or rejected (with
        its raw JSON)."""
        normalised, parsed, source = state.normalised, state.parsed, state.source
        assert normalised is not None and parsed is not None and source is not None
        rejected = [
            Outcome(
                stage="normalise",
                status="rejected",
                message_id=rejection.message_id,
                source_id=source.id,
                reason=rejection.code,
                detail=rejection.message,
                payload=bytes(parsed.messages[rejection.index]),
            )
            for rejection in normalised.rejected
        ]
        outcomes: list[Outcome] = []
        if self._routine:
            outcomes = [
                Outcome(
                    stage="normalise",
                    status="accepted",
                    message_id=event.message_id,
                    source_id=source.id,
                    event=event,
                )
                for event in normalised.events
            ]
            outcomes += rejected
        lean: list[Outcome] | None = None
        if self._lean:
            lean = []
            if normalised.events:
                lean.append(
                    Outcome(
                        stage="normalise",
                        status="accepted",
                        message_id=None,
                        source_id=source.id,
                        count=len(normalised.events),
                    )
                )
            lean += rejected
        await self._tell(outcomes, lean)

    async def _observe_stage(self, state: _Request, stage: str, result: StageResult) -> None:
        source = state.source
        assert source is not None
        outcomes = list(result.outcomes)
        outcomes += [
            Outcome(
                stage=stage,
                status="dropped",
                message_id=drop.event.message_id,
                source_id=source.id,
                reason=drop.reason,
                detail=drop.detail or None,
                event=drop.event,
            )
            for drop in result.dropped
        ]
        lean: list[Outcome] | None = None
        if self._lean:
            # A dropped event never reaches the buffer: its arrival is told here.
            lean = []
            for drop in result.dropped:
                original = self._original(state, drop.event.message_id)
                if original is not None:
                    lean.append(
                        Outcome(
                            stage="normalise",
                            status="accepted",
                            message_id=original.message_id,
                            source_id=source.id,
                            event=original,
                        )
                    )
            lean += outcomes
        await self._tell(outcomes, lean)

    async def _observe_refusal(self, verdict: Refused, state: _Request) -> None:
        """A refused request, message by message: each message's raw JSON (or its event, once
        it has one) and why nothing of it was kept."""
        source_id = state.source.id if state.source is not None else None

        def rejected(
            message_id: str | None, event: Event | None = None, payload: bytes | None = None
        ) -> Outcome:
            return Outcome(
                stage=verdict.stage,
                status="rejected",
                message_id=message_id,
                source_id=source_id,
                reason=verdict.code,
                detail=verdict.message,
                event=event,
                payload=payload,
            )

        if state.events and state.normalised is not None:
            # Refused after normalisation (a failing stage, Redis down): the events exist.
            await self.observe([rejected(event.message_id, event=event) for event in state.events])
        elif state.message_ids:
            # Refused by the buffer, its events already freed: their messageIds remain.
            await self.observe([rejected(message_id) for message_id in state.message_ids])
        elif state.parsed is not None and state.parsed.messages:
            await self.observe(
                [rejected(None, payload=bytes(message)) for message in state.parsed.messages]
            )
        else:
            # Not even readable: one outcome for the request.
            await self.observe([rejected(None)])


def _refused(
    reason: RefusalReason, stage: str, code: str, message: str, *, retry_after: int | None = None
) -> _Refusal:
    return _Refusal(
        Refused(reason=reason, stage=stage, code=code, message=message, retry_after=retry_after)
    )
