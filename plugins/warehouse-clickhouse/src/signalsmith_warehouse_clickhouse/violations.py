"""Loading the violations stream into the ``violations`` table.

A contract stage (the contracts plugin) writes one ``ViolationRecord`` per event it found fault
with to the core's violations stream, blocked events included: they are nowhere else. Where this
plugin holds the warehouse, a loader reads that stream in its own consumer group (several
workers share it) and writes one row per violation; an entry is acknowledged once written, and
a failed write is tried again, from the entries still pending, after a pause. The record is the
core's (``signalsmith.ViolationRecord``), so this plugin knows nothing of the contracts plugin,
and without it the stream is simply empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from signalsmith import VIOLATION_RECORD_FIELD, VIOLATIONS_STREAM, Runtime, ViolationRecord
from signalsmith_warehouse_clickhouse.warehouse import ClickHouseWarehouse

log = logging.getLogger("signalsmith.warehouse_clickhouse")

READ_COUNT = 1000
RETRY_SECONDS = 2.0
_decoder = msgspec.msgpack.Decoder(ViolationRecord)


class ViolationsLoader:
    """Reads the violations stream into ``warehouse``'s ``violations`` table until stopped."""

    def __init__(self, runtime: Runtime, warehouse: ClickHouseWarehouse, sink_name: str) -> None:
        self.redis = runtime.redis
        self.stream = runtime.key(VIOLATIONS_STREAM)
        self.group = f"{sink_name}:violations"
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.warehouse = warehouse
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._grouped = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="signalsmith warehouse violations"
        )

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _ensure_group(self) -> bool:
        """Whether there is a stream to read (created by the first violation, not here)."""
        if self._grouped:
            return True
        if not await self.redis.exists(self.stream):
            return False
        try:
            # From the start of what the stream holds: records written before the first loader
            # ran (the stream is capped, not trimmed by readers) are loaded too.
            await self.redis.xgroup_create(self.stream, self.group, id="0")
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._grouped = True
        return True

    async def _run(self) -> None:
        backlog = True  # first the entries this consumer read and did not acknowledge
        while not self._stop.is_set():
            try:
                if not await self._ensure_group():
                    await self._pause()
                    continue
                answer = await self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: "0" if backlog else ">"},
                    count=READ_COUNT,
                    block=None if backlog else 1000,
                )
                entries = answer[0][1] if answer else []
                if backlog and not entries:
                    backlog = False
                    continue
                if entries:
                    await self.load(entries)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("loading violations failed; trying again in %ss", RETRY_SECONDS)
                backlog = True
                self._grouped = False
                await self._pause()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), RETRY_SECONDS)

    async def load(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        records = []
        for _, fields in entries:
            payload = fields.get(VIOLATION_RECORD_FIELD.encode()) if fields else None
            if payload is None:
                continue  # trimmed while pending: nothing left to load
            try:
                records.append(_decoder.decode(payload))
            except msgspec.DecodeError:
                log.error("a violations entry is not a ViolationRecord; skipped")
        if records:
            await self.warehouse.write_violations(records)
        await self.redis.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
