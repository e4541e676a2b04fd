"""The collector's ordered pipeline, independent of HTTP: bytes in, an answer out.

Order (`docs/plugin-hooks.md`): parse -> authenticate -> admit -> normalise -> validate ->
transform -> consent -> dedupe and buffer. Stage hooks are called once per request with the
whole batch. The answer is 200 only after the events are in Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
from redis.exceptions import RedisError

from signalsmith.buffer import BacklogFull, BufferUnavailable, EventBuffer
from signalsmith.hooks import PluginCall, PluginFailed, resolve
from signalsmith.model import Event
from signalsmith.normalize import RequestError, normalise_messages, parse_request
from signalsmith.records import Credentials, Drop, Outcome, Refusal, Rejection, Source, StageResult
from signalsmith.runtime import Runtime
from signalsmith.workspace import UnknownSource

log = logging.getLogger("signalsmith.pipeline")

GATE_STAGES = ("validate_events", "transform_events", "apply_consent")
STAGE_NAMES = {
    "validate_events": "validate",
    "transform_events": "transform",
    "apply_consent": "consent",
}


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error answer: analytics-python reads exactly these two keys."""

    code: str
    message: str


class DroppedReport(msgspec.Struct, frozen=True):
    index: int
    message_id: str = msgspec.field(name="messageId")
    stage: str
    reason: str


class RejectedReport(msgspec.Struct, frozen=True):
    index: int
    message_id: str | None = msgspec.field(name="messageId")
    code: str
    message: str


class SuccessBody(msgspec.Struct, frozen=True, kw_only=True):
    """A 200 answer: how many messages were buffered, and what happened to the others."""

    success: bool = True
    accepted: int
    duplicates: int = 0
    rejected: list[RejectedReport] = []
    dropped: list[DroppedReport] = []


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """An HTTP-independent answer the web layer turns into a response."""

    status: int
    body: SuccessBody | ErrorBody
    headers: dict[str, str] = {}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status=status, body=ErrorBody(code=code, message=message), headers=headers or {})


class UnknownTransform(Exception):
    """A source's configuration names a transform no installed plugin registers."""


class _Step(msgspec.Struct, frozen=True, kw_only=True):
    """One link of the validate -> transform -> consent chain."""

    stage: str
    hook_name: str
    owner: str
    run: Callable[[Source, list[Event]], Any]


def _call_stage(plugin: PluginCall, runtime: Runtime, source: Source, events: list[Event]) -> Any:
    return plugin(source=source, events=events, runtime=runtime)


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
        self._observers = self.hooks.has_observers
        self._transforms = runtime.transforms

    async def ingest(
        self,
        body: bytes,
        *,
        path: str,
        path_type: str | None,
        batch: bool | None,
        header_keys: Sequence[str] = (),
        client_ip: str | None = None,
        stamp_ip: bool = False,
    ) -> Answer:
        settings = self.settings
        try:
            request = parse_request(
                body,
                batch=batch,
                max_messages=settings.max_batch_messages,
                max_message_bytes=settings.max_message_bytes,
            )
        except RequestError as error:
            return _error(error.status, error.code, error.message)

        keys = [*header_keys]
        if request.write_key and request.write_key not in keys:
            keys.append(request.write_key)
        if not keys:
            return _error(
                401,
                "missing_write_key",
                "no write key: send it as the Basic auth username, as a Bearer token, "
                "or as writeKey in the body",
            )
        credentials = Credentials(write_keys=tuple(keys), remote_addr=client_ip, path=path)
        try:
            source = await self.authenticate(credentials)
        except (RedisError, OSError) as error:
            # Redis's words stay in the log: they can name a socket path.
            log.warning("write keys cannot be checked: %s", error)
            return _error(
                503,
                "auth_unavailable",
                "write keys cannot be checked now (Redis unreachable)",
                {"Retry-After": str(settings.retry_after_seconds)},
            )
        except PluginFailed as failure:
            log.exception("plugin %s failed in authenticate", failure.plugin_name)
            return _error(
                500,
                "auth_failed",
                f"plugin {failure.plugin_name!r} failed in authenticate; see server logs",
            )
        except UnknownSource as error:  # a key of a source the workspace does not list
            return _error(403, "unknown_source", str(error))
        if source is None:
            return _error(
                401,
                "invalid_write_key",
                "write key not recognised; create one with `signalsmith keys create`",
            )

        try:
            refusal: Refusal | None = await self.hooks.admit_events(
                source,
                len(request.messages),
                path,
                self.runtime,
                errors_pass=(RedisError, OSError),
            )
        except (RedisError, OSError) as error:
            log.warning("rate limits cannot be checked: %s", error)
            return _error(
                503,
                "admit_unavailable",
                "rate limits cannot be checked now (Redis unreachable)",
                {"Retry-After": str(settings.retry_after_seconds)},
            )
        except PluginFailed as failure:
            log.exception("plugin %s failed in admit_events", failure.plugin_name)
            return _error(
                500,
                "admit_failed",
                f"plugin {failure.plugin_name!r} failed in admit_events; see server logs",
            )
        if refusal is not None:
            if refusal.status != 429:
                # Not a rate limit (a revoked key, a batch that can never fit): no
                # Retry-After, so clients do not wait and try again.
                return _error(refusal.status, refusal.reason, refusal.message)
            reset = refusal.reset_after if refusal.reset_after is not None else refusal.retry_after
            return _error(
                429,
                refusal.reason,
                refusal.message,
                {"Retry-After": str(refusal.retry_after), "X-RateLimit-Reset": str(reset)},
            )

        received_at = datetime.now(UTC)
        normalised = normalise_messages(
            request,
            path_type=path_type,
            received_at=received_at,
            source_id=source.id,
            max_message_bytes=settings.max_message_bytes,
            client_ip=client_ip if stamp_ip else None,
        )
        events = normalised.events
        # Request position by messageId, so a drop by any later stage reports where it came from;
        # built on the first drop only (most requests have none).
        index_of: dict[str, int] = {}
        outcomes: list[Outcome] = []
        dropped: list[DroppedReport] = []
        if self._observers:
            outcomes.extend(_rejected_outcomes(normalised.rejected, source))

        try:
            steps = self._steps_for(source)
        except UnknownTransform as error:
            return _error(500, "unknown_transform", str(error))
        for step in steps:
            if not events:
                break
            try:
                result: StageResult | None = await resolve(step.run(source, events))
            except Exception:
                log.exception("%s failed in %s", step.owner, step.hook_name)
                return _error(
                    500,
                    f"{step.stage}_failed",
                    f"{step.owner} failed in {step.hook_name}; see server logs",
                )
            if result is None:
                continue
            if result.dropped and not index_of:
                for event, index in zip(normalised.events, normalised.indexes, strict=True):
                    index_of.setdefault(event.message_id, index)
            for drop in result.dropped:
                dropped.append(_dropped_report(drop, step.stage, index_of))
            outcomes.extend(result.outcomes)
            if self._observers:
                outcomes.extend(
                    Outcome(
                        stage=step.stage,
                        status="dropped",
                        message_id=drop.event.message_id,
                        source_id=source.id,
                        reason=drop.reason,
                        detail=drop.detail or None,
                    )
                    for drop in result.dropped
                )
            events = result.events

        duplicates: list[int] = []
        count = len(events)
        rejected = normalised.rejected
        if events:
            appending = self.buffer.append(source.id, events)
            if not self._observers:
                # Nothing needs the events once the buffer has encoded them: drop this frame's
                # references so they are freed right after encoding, while still in cache, and
                # not held (thousands of objects per batch) for the whole Redis round trip.
                # Profiled under batch load, freeing them after the wait cost ~20% of the CPU.
                events = normalised = request = result = None  # type: ignore[assignment]
            try:
                duplicates = await appending
            except BacklogFull as error:
                return _error(
                    503, "backlog_full", str(error), {"Retry-After": str(error.retry_after)}
                )
            except BufferUnavailable as error:
                return _error(
                    503, "buffer_unavailable", str(error), {"Retry-After": str(error.retry_after)}
                )

        if self._observers:
            duplicate_set = set(duplicates)
            outcomes.extend(
                Outcome(
                    stage="buffer",
                    status="duplicate" if position in duplicate_set else "buffered",
                    message_id=event.message_id,
                    source_id=source.id,
                )
                for position, event in enumerate(events)
            )
            await self.observe(outcomes)

        return Answer(
            status=200,
            body=SuccessBody(
                accepted=count - len(duplicates),
                duplicates=len(duplicates),
                rejected=[
                    RejectedReport(
                        index=rejection.index,
                        message_id=rejection.message_id,
                        code=rejection.code,
                        message=rejection.message,
                    )
                    for rejection in rejected
                ],
                dropped=dropped,
            ),
        )

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
        named = []
        for name in names:
            transform = self._transforms.get(name)
            if transform is None:
                raise UnknownTransform(
                    f"source {source.name!r} lists transform {name!r}, which is not configured "
                    f"(configured: {', '.join(sorted(self._transforms)) or 'none'}); declare it "
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


def _rejected_outcomes(rejected: list[Rejection], source: Source) -> list[Outcome]:
    return [
        Outcome(
            stage="normalise",
            status="rejected",
            message_id=rejection.message_id,
            source_id=source.id,
            reason=rejection.code,
            detail=rejection.message,
        )
        for rejection in rejected
    ]


def _dropped_report(drop: Drop, stage: str, index_of: dict[str, int]) -> DroppedReport:
    return DroppedReport(
        index=index_of.get(drop.event.message_id, -1),
        message_id=drop.event.message_id,
        stage=stage,
        reason=drop.reason,
    )
