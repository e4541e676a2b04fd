"""Forwarding violations as ``Violation Generated`` track events to another source.

Segment's names (`shared/reference/segment-spec.md` section 4): ``userId: "schema-violations"``,
``properties{eventMessageID, eventName, eventType, eventSentAt, eventTimestamp, sourceID,
sourceName, sourceSlug, trackingPlanID, trackingPlanName, violationDescription, violationField,
violationType, appVersion}`` and ``forwardedFromProject``. One event per violation, posted as a
batch to a Segment-compatible HTTP API (this SignalSmith's collector, or Segment's) with the
write key of the receiving source, so they go through that source's own pipeline.

Where events are delivered (``runtime.delivers``), a forwarder reads the violations stream in its
own consumer group: several workers share the work, an entry is acknowledged once its events
were accepted (or the source does not forward), and one that failed is tried again after a
pause. Each event's messageId derives from the violating event's, so a retry is deduplicated by
the receiving collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import httpx
import msgspec
from redis.exceptions import ResponseError

from signalsmith import VIOLATION_RECORD_FIELD, Runtime, ViolationRecord, resolve_placeholders
from signalsmith_contracts.section import SECTION, BuiltContracts
from signalsmith_contracts.settings import Forwarding
from signalsmith_contracts.store import ContractsStore, record_decoder

log = logging.getLogger("signalsmith.contracts")

GROUP = "contracts-forward"
READ_COUNT = 100
RETRY_SECONDS = 2.0
VIOLATIONS_USER_ID = "schema-violations"


def violation_events(record: ViolationRecord, source_name: str) -> list[dict[str, Any]]:
    """The ``Violation Generated`` events of one record, in Segment's shape."""
    try:
        original = msgspec.json.decode(record.event) if record.event else {}
    except msgspec.DecodeError:
        original = {}
    context = original.get("context") if isinstance(original.get("context"), dict) else {}
    app = context.get("app") if isinstance(context.get("app"), dict) else {}
    events = []
    for index, violation in enumerate(record.violations):
        events.append(
            {
                "type": "track",
                "event": "Violation Generated",
                "userId": VIOLATIONS_USER_ID,
                "messageId": f"violation-{record.message_id}-{index}",
                "timestamp": original.get("receivedAt") or record.received_at.isoformat(),
                "forwardedFromProject": record.source_id,
                "properties": {
                    "eventMessageID": record.message_id,
                    "eventName": record.event_name,
                    "eventType": record.event_type,
                    "eventSentAt": original.get("sentAt"),
                    "eventTimestamp": original.get("timestamp"),
                    "sourceID": record.source_id,
                    "sourceName": source_name,
                    "sourceSlug": source_name,
                    "trackingPlanID": record.plan,
                    "trackingPlanName": record.plan,
                    "violationDescription": violation.description,
                    "violationField": violation.field,
                    "violationType": violation.type,
                    "appVersion": app.get("version"),
                },
            }
        )
    return events


class ForwardFailed(Exception):
    """A batch the receiving API did not accept and that may be accepted later."""


class ViolationForwarder:
    """Reads the violations stream in its consumer group and posts what sources forward."""

    def __init__(self, runtime: Runtime, store: ContractsStore) -> None:
        self.runtime = runtime
        self.store = store
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._grouped = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="signalsmith contracts forwarder"
        )

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    def _forwarding(self, source_id: str) -> Forwarding | None:
        active = self.runtime.workspace.active
        if active is None:
            return None
        built = active.sections.get(SECTION)
        if not isinstance(built, BuiltContracts):
            return None
        enforcer = built.enforcers.get(source_id)
        return enforcer.contract.forward_violations if enforcer is not None else None

    def _forwards(self) -> bool:
        """Whether any source of the version in use forwards its violations."""
        active = self.runtime.workspace.active
        built = active.sections.get(SECTION) if active is not None else None
        return isinstance(built, BuiltContracts) and any(
            enforcer.contract.forward_violations is not None
            for enforcer in built.enforcers.values()
        )

    async def _ensure_group(self) -> None:
        if self._grouped:
            return
        # From when the version in use was applied: violations recorded before forwarding was
        # configured stay unforwarded.
        active = self.runtime.workspace.active
        applied_at = getattr(getattr(active, "stored", None), "applied_at", None)
        start = f"{int(applied_at.timestamp() * 1000)}-0" if applied_at is not None else "$"
        try:
            await self.store.redis.xgroup_create(self.store.stream, GROUP, id=start, mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._grouped = True

    async def _run(self) -> None:
        redis = self.store.redis
        backlog = True  # first what this consumer read and did not acknowledge
        while not self._stop.is_set():
            try:
                if not self._forwards():
                    # Nothing to do (and no consumer group to hold) until a version forwards.
                    await self._pause()
                    continue
                await self._ensure_group()
                answer = await redis.xreadgroup(
                    GROUP,
                    self.consumer,
                    {self.store.stream: "0" if backlog else ">"},
                    count=READ_COUNT,
                    block=None if backlog else 1000,
                )
                entries = answer[0][1] if answer else []
                if backlog and not entries:
                    backlog = False
                    continue
                done = await self.forward(entries)
                if done:
                    await redis.xack(self.store.stream, GROUP, *done)
                if len(done) < len(entries):
                    backlog = True
                    await self._pause()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("forwarding violations failed; trying again in %ss", RETRY_SECONDS)
                backlog = True
                self._grouped = False
                await self._pause()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), RETRY_SECONDS)

    async def forward(self, entries: list[tuple[Any, dict[Any, Any]]]) -> list[Any]:
        """Post the events of ``entries``; return the ids that are settled."""
        by_target: dict[tuple[str, str], tuple[list[Any], list[dict[str, Any]]]] = {}
        done: list[Any] = []
        for entry_id, fields in entries:
            payload = fields.get(VIOLATION_RECORD_FIELD.encode()) if fields else None
            if payload is None:
                done.append(entry_id)
                continue
            record = record_decoder.decode(payload)
            forwarding = self._forwarding(record.source_id)
            if forwarding is None or not record.violations:
                done.append(entry_id)
                continue
            try:
                target = resolve_placeholders(
                    {"url": forwarding.url, "write_key": forwarding.write_key}
                )
            except Exception as error:
                log.error("cannot forward violations of source %s: %s", record.source_id, error)
                done.append(entry_id)
                continue
            ids, events = by_target.setdefault((target["url"], target["write_key"]), ([], []))
            ids.append(entry_id)
            events += violation_events(record, record.source_id)
        for (url, write_key), (ids, events) in by_target.items():
            try:
                await self._post(url, write_key, events)
            except ForwardFailed as failure:
                log.warning("forwarding %d violations to %s failed: %s", len(events), url, failure)
                continue
            done += ids
        return done

    async def _post(self, url: str, write_key: str, events: list[dict[str, Any]]) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        endpoint = url.rstrip("/") + "/v1/batch"
        try:
            response = await self._client.post(
                endpoint, json={"batch": events}, auth=(write_key, "")
            )
        except httpx.HTTPError as error:
            raise ForwardFailed(f"{type(error).__name__}: {error}") from error
        if response.status_code >= 500 or response.status_code == 429:
            raise ForwardFailed(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            # Retrying cannot help (a wrong write key): say so, and let the entries go.
            log.error(
                "forwarding violations to %s was refused: HTTP %d %s",
                endpoint,
                response.status_code,
                response.text[:200],
            )
