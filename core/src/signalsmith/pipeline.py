"""The collector's ordered pipeline, independent of HTTP: bytes in, an answer out.

Order (`docs/plugin-hooks.md`): parse -> authenticate -> admit -> normalise -> validate ->
transform -> consent -> dedupe and buffer. Stage hooks are called once per request with the
whole batch. The answer is 200 only after the events are in Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from signalsmith.buffer import BacklogFull, BufferUnavailable, EventBuffer
from signalsmith.normalize import RequestError, normalise_messages, parse_request
from signalsmith.plugins import impls_in_call_order, resolve
from signalsmith.records import Credentials, Drop, Outcome, Refusal, Rejection, Source, StageResult
from signalsmith.runtime import Runtime

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


class Pipeline:
    """Runs one request through every collector stage, calling each plugin in order."""

    def __init__(self, runtime: Runtime, buffer: EventBuffer) -> None:
        self.runtime = runtime
        self.buffer = buffer
        self.settings = runtime.settings
        pm = runtime.pm
        # Hook implementations are looked up once: the request path only iterates lists.
        self._stages = [(name, impls_in_call_order(pm, name)) for name in GATE_STAGES]
        self._observers = impls_in_call_order(pm, "observe_outcomes")
        self._authenticate = pm.hook.authenticate
        self._admit = pm.hook.admit_events
        self._has_admit = bool(pm.hook.admit_events.get_hookimpls())

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
            request = parse_request(body, batch=batch, max_messages=settings.max_batch_messages)
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
            source = await resolve(self._authenticate(credentials=credentials))
        except Exception:
            log.exception("authenticate hook failed")
            return _error(500, "auth_failed", "the authentication plugin failed; see server logs")
        if source is None:
            return _error(
                401,
                "invalid_write_key",
                "write key not recognised; create one with `signalsmith keys create`",
            )

        if self._has_admit:
            try:
                refusal: Refusal | None = await resolve(
                    self._admit(source=source, count=len(request.messages), path=path)
                )
            except Exception:
                log.exception("admit_events hook failed")
                return _error(500, "admit_failed", "the rate-limit plugin failed; see server logs")
            if refusal is not None:
                reset = (
                    refusal.reset_after if refusal.reset_after is not None else refusal.retry_after
                )
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
        index_of = {
            id(event): index for event, index in zip(events, normalised.indexes, strict=True)
        }
        outcomes: list[Outcome] = []
        dropped: list[DroppedReport] = []
        if self._observers:
            outcomes.extend(_rejected_outcomes(normalised.rejected, source))

        for hook_name, impls in self._stages:
            stage = STAGE_NAMES[hook_name]
            for impl in impls:
                if not events:
                    break
                try:
                    result: StageResult | None = await resolve(
                        impl.function(source=source, events=events)
                    )
                except Exception:
                    log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)
                    return _error(
                        500,
                        f"{stage}_failed",
                        f"plugin {impl.plugin_name!r} failed in {hook_name}; see server logs",
                    )
                if result is None:
                    continue
                for drop in result.dropped:
                    dropped.append(_dropped_report(drop, stage, index_of))
                outcomes.extend(result.outcomes)
                if self._observers:
                    outcomes.extend(
                        Outcome(
                            stage=stage,
                            status="dropped",
                            message_id=drop.event.message_id,
                            source_id=source.id,
                            reason=drop.reason,
                            detail=drop.detail or None,
                        )
                        for drop in result.dropped
                    )
                for event in result.events:
                    # Replaced events keep the request position of the one they replace.
                    index_of.setdefault(id(event), -1)
                events = result.events

        duplicates: list[int] = []
        if events:
            try:
                duplicates = await self.buffer.append(source.id, events)
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
                accepted=len(events) - len(duplicates),
                duplicates=len(duplicates),
                rejected=[
                    RejectedReport(
                        index=rejection.index,
                        message_id=rejection.message_id,
                        code=rejection.code,
                        message=rejection.message,
                    )
                    for rejection in normalised.rejected
                ],
                dropped=dropped,
            ),
        )

    async def observe(self, outcomes: list[Outcome]) -> None:
        """Tell every observer; one that fails is logged and the others still run."""
        if not outcomes:
            return
        for impl in self._observers:
            try:
                await resolve(impl.function(outcomes=outcomes))
            except Exception:
                log.exception("observer %s failed", impl.plugin_name)


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


def _dropped_report(drop: Drop, stage: str, index_of: dict[int, int]) -> DroppedReport:
    return DroppedReport(
        index=index_of.get(id(drop.event), -1),
        message_id=drop.event.message_id,
        stage=stage,
        reason=drop.reason,
    )
