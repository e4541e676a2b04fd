"""Reports over what the plugin recorded: violations by source, event and rule over a window,
and what each shadow plan would have done. The CLI and the admin API print the same records."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from signalsmith import Runtime
from signalsmith_contracts.section import SECTION, BuiltContracts
from signalsmith_contracts.store import SEPARATOR, ContractsStore, ShadowSample

_DURATION = re.compile(r"(\d+)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in ``90``, ``90s``, ``15m``, ``24h`` or ``7d``; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: write 90s, 15m, 1h, 24h or 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class ViolationGroup(msgspec.Struct, frozen=True, kw_only=True):
    """One kind of violation of one event of one source, over the window."""

    source: str
    event_type: str
    event_name: str
    type: str
    field: str
    rule: str
    count: int
    blocked: int
    last_seen: str
    samples: list[dict[str, Any]] = []


class ViolationsReport(msgspec.Struct, frozen=True, kw_only=True):
    since_seconds: int
    events: int
    blocked: int
    groups: list[ViolationGroup]
    # The stream is capped: when it holds nothing older than the window's start, this says when
    # its oldest record is from (the warehouse's `violations` table keeps everything).
    oldest_record: str | None = None


def _iso(milliseconds: int) -> str:
    moment = datetime.fromtimestamp(milliseconds / 1000, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


async def violations_report(
    store: ContractsStore, since_seconds: int, *, source: str | None = None, samples: int = 3
) -> ViolationsReport:
    records = await store.records_since(since_seconds)
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    events = blocked = 0
    for entry_id, record in records:
        if source is not None and record.source_id != source:
            continue
        events += 1
        blocked += record.handling == "blocked"
        seen = _iso(int(entry_id.split("-")[0]))
        for violation in record.violations:
            key = (
                record.source_id,
                record.event_type,
                record.event_name,
                violation.type,
                violation.field,
                violation.rule,
            )
            group = groups.setdefault(key, {"count": 0, "blocked": 0, "samples": []})
            group["count"] += 1
            group["blocked"] += record.handling == "blocked"
            group["last_seen"] = seen
            if len(group["samples"]) < samples and record.event:
                group["samples"].append(msgspec.json.decode(record.event))
    oldest = await store.oldest_record_ms()
    window_start = (time.time() - since_seconds) * 1000
    return ViolationsReport(
        since_seconds=since_seconds,
        events=events,
        blocked=blocked,
        groups=sorted(
            (
                ViolationGroup(
                    source=key[0],
                    event_type=key[1],
                    event_name=key[2],
                    type=key[3],
                    field=key[4],
                    rule=key[5],
                    count=found["count"],
                    blocked=found["blocked"],
                    last_seen=found["last_seen"],
                    samples=found["samples"],
                )
                for key, found in groups.items()
            ),
            key=lambda group: (-group.count, group.source, group.event_name, group.field),
        ),
        oldest_record=_iso(oldest) if oldest is not None and oldest > window_start else None,
    )


class ShadowRow(msgspec.Struct, frozen=True, kw_only=True):
    """One event name of one source: what the enforced plan did and the shadow would have."""

    source: str
    enforced_plan: str
    shadow_plan: str
    event_type: str
    event_name: str
    seen: int
    enforced: dict[str, int]
    shadow: dict[str, int]
    samples: list[ShadowSample] = []


class ShadowReport(msgspec.Struct, frozen=True, kw_only=True):
    workspace_version: int | None
    rows: list[ShadowRow]
    # When each source's shadow counts started (its shadow plan's content first ran).
    since: dict[str, str] = {}


async def shadow_report(
    runtime: Runtime, store: ContractsStore, *, source: str | None = None
) -> ShadowReport:
    active = runtime.workspace.active
    built = active.sections.get(SECTION) if active is not None else None
    if not isinstance(built, BuiltContracts):
        return ShadowReport(workspace_version=active.version if active else None, rows=[])
    rows: list[ShadowRow] = []
    since: dict[str, str] = {}
    for source_id, shadow in sorted(built.shadows.items()):
        if source is not None and source_id != source:
            continue
        plan = shadow.plan
        counts, started = await store.shadow_counts(source_id, plan.name, plan.digest)
        if started is not None:
            since[source_id] = _iso(started * 1000)
        by_event: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
        for field, count in counts.items():
            event_type, name, who, action = field.split(SEPARATOR)
            by_event.setdefault((event_type, name), {"enforced": {}, "shadow": {}})[who][action] = (
                count
            )
        sample_fields = [
            SEPARATOR.join((event_type, name, "shadow", action))
            for (event_type, name), found in by_event.items()
            for action in found["shadow"]
            if action != "passed"
        ]
        samples = await store.shadow_samples(source_id, plan.name, plan.digest, sample_fields)
        enforced_plan = built.enforcers[source_id].plan.name
        for (event_type, name), found in sorted(by_event.items()):
            rows.append(
                ShadowRow(
                    source=source_id,
                    enforced_plan=enforced_plan,
                    shadow_plan=plan.name,
                    event_type=event_type,
                    event_name=name,
                    seen=sum(found["shadow"].values()),
                    enforced=found["enforced"],
                    shadow=found["shadow"],
                    samples=[
                        sample
                        for action in found["shadow"]
                        for sample in samples.get(
                            SEPARATOR.join((event_type, name, "shadow", action)), []
                        )
                    ],
                )
            )
    return ShadowReport(
        workspace_version=active.version if active else None, rows=rows, since=since
    )
