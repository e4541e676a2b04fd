"""What the contracts plugin keeps in Redis: the violations stream and shadow-plan tallies.

- ``P:violations``: one ``ViolationRecord`` (the core's record) per event a contract found fault
  with, capped at ``SIGNALSMITH_CONTRACTS_VIOLATIONS_MAXLEN`` entries. Entry ids are times, so a
  report over the last hour reads the entries from an hour ago on. The warehouse loads it into
  its ``violations`` table; ``Violation Generated`` events are forwarded from it.
- ``P:contracts:shadow:<source>:<plan>:<digest>``: a hash of counts, ``<type>\\x1f<name>\\x1f
  <who>\\x1f<action>`` (who: ``shadow`` or ``enforced``), for a shadow plan's content
  (``digest``), and a few sample lists beside it.

Written once per request, in one pipelined round trip, and only when a request had violations
or a shadow plan runs.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from signalsmith import VIOLATION_RECORD_FIELD, VIOLATIONS_STREAM, Runtime, ViolationRecord

DEFAULT_VIOLATIONS_MAXLEN = 1_000_000
SHADOW_SAMPLES = 3
# Shadow tallies are kept this long after their last write.
SHADOW_TTL_SECONDS = 30 * 86400
SEPARATOR = "\x1f"

record_encoder = msgspec.msgpack.Encoder()
record_decoder = msgspec.msgpack.Decoder(ViolationRecord)


class ShadowSample(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An event a shadow plan would have blocked or changed, and why."""

    message_id: str
    action: str
    reason: str
    omitted: list[str] = []
    event: dict[str, Any] = {}


class ShadowTally:
    """What one request's events did under a source's shadow plan, and under the enforced one."""

    __slots__ = ("counts", "digest", "plan", "samples", "source_id")

    def __init__(self, source_id: str, plan: str, digest: str) -> None:
        self.source_id = source_id
        self.plan = plan
        self.digest = digest
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, ShadowSample] = {}

    def count(self, event_type: str, name: str, who: str, action: str) -> str:
        field = SEPARATOR.join((event_type, name, who, action))
        self.counts[field] += 1
        return field


def violations_maxlen() -> int:
    written = os.environ.get("SIGNALSMITH_CONTRACTS_VIOLATIONS_MAXLEN", "")
    try:
        return int(written) if written else DEFAULT_VIOLATIONS_MAXLEN
    except ValueError:
        raise ValueError(
            f"SIGNALSMITH_CONTRACTS_VIOLATIONS_MAXLEN must be a whole number, got {written!r}"
        ) from None


def shadow_key(runtime: Runtime, source_id: str, plan: str, digest: str) -> str:
    return runtime.key("contracts", "shadow", source_id, plan, digest)


class ContractsStore:
    """The plugin's Redis keys, for one process (attached to the runtime at startup)."""

    def __init__(self, runtime: Runtime, maxlen: int) -> None:
        self.runtime = runtime
        self.redis: aioredis.Redis = runtime.redis
        self.stream = runtime.key(VIOLATIONS_STREAM)
        self.maxlen = maxlen

    async def write(self, records: list[ViolationRecord], tally: ShadowTally | None) -> None:
        """Append ``records`` and add ``tally``, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for record in records:
            pipe.xadd(
                self.stream,
                {VIOLATION_RECORD_FIELD: record_encoder.encode(record)},
                maxlen=self.maxlen,
                approximate=True,
            )
        if tally is not None and tally.counts:
            key = shadow_key(self.runtime, tally.source_id, tally.plan, tally.digest)
            for field, count in tally.counts.items():
                pipe.hincrby(key, field, count)
            pipe.hsetnx(key, "since", int(time.time()))
            pipe.expire(key, SHADOW_TTL_SECONDS)
            for field, sample in tally.samples.items():
                samples = f"{key}:samples:{field}"
                pipe.lpush(samples, msgspec.json.encode(sample))
                pipe.ltrim(samples, 0, SHADOW_SAMPLES - 1)
                pipe.expire(samples, SHADOW_TTL_SECONDS)
        await pipe.execute()

    async def records_since(
        self, since_seconds: float, *, limit: int | None = None
    ) -> list[tuple[str, ViolationRecord]]:
        """Every record written in the last ``since_seconds``, oldest first, with its entry id."""
        start = int((time.time() - since_seconds) * 1000)
        found: list[tuple[str, ViolationRecord]] = []
        cursor = f"{start}-0"
        while True:
            page = await self.redis.xrange(self.stream, min=cursor, max="+", count=1000)
            for entry_id, fields in page:
                identifier = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                payload = fields.get(VIOLATION_RECORD_FIELD.encode()) or fields.get(
                    VIOLATION_RECORD_FIELD
                )
                if payload is None:
                    continue
                found.append((identifier, record_decoder.decode(payload)))
                if limit is not None and len(found) >= limit:
                    return found
            if len(page) < 1000:
                return found
            cursor = "(" + (
                page[-1][0].decode() if isinstance(page[-1][0], bytes) else str(page[-1][0])
            )

    async def oldest_record_ms(self) -> int | None:
        first = await self.redis.xrange(self.stream, count=1)
        if not first:
            return None
        entry_id = first[0][0]
        text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        return int(text.split("-")[0])

    async def shadow_counts(
        self, source_id: str, plan: str, digest: str
    ) -> tuple[dict[str, int], int | None]:
        key = shadow_key(self.runtime, source_id, plan, digest)
        raw = await self.redis.hgetall(key)
        counts: dict[str, int] = {}
        since: int | None = None
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else field
            if name == "since":
                since = int(value)
            else:
                counts[name] = int(value)
        return counts, since

    async def shadow_samples(
        self, source_id: str, plan: str, digest: str, fields: Iterable[str]
    ) -> dict[str, list[ShadowSample]]:
        key = shadow_key(self.runtime, source_id, plan, digest)
        fields = list(fields)
        pipe = self.redis.pipeline(transaction=False)
        for field in fields:
            pipe.lrange(f"{key}:samples:{field}", 0, SHADOW_SAMPLES - 1)
        listed = await pipe.execute()
        return {
            field: [msgspec.json.decode(item, type=ShadowSample) for item in items]
            for field, items in zip(fields, listed, strict=True)
        }
