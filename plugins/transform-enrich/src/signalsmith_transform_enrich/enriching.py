"""The ``enrich`` transform: user agent, then geo, then lookup, on each event of the batch.

A field an enrichment reads but the event lacks (no ``context.ip`` on a server-side event) is
not an error: there is nothing to enrich. A field of the wrong type (a number where the user
agent should be, text that is no IP address), or a lookup that failed, leaves the event as it
is and says so in a ``skipped`` outcome; a failed lookup drops the event instead when
``on_failure: drop``. Events are never changed in place (``signalsmith.EventEdit``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from signalsmith import (
    MISSING,
    Drop,
    Event,
    EventEdit,
    EventPath,
    Outcome,
    Source,
    StageResult,
    kind_of,
)
from signalsmith_transform_enrich.geo import NotAnAddress, locator, open_database
from signalsmith_transform_enrich.lookup import Failed, Found, LookupService
from signalsmith_transform_enrich.settings import EnrichSettings
from signalsmith_transform_enrich.user_agent import user_agent_fields

log = logging.getLogger("signalsmith.transform.enrich")


class _Batch:
    """The edits and problems of one batch, event by event."""

    __slots__ = ("drops", "edits", "problems")

    def __init__(self, events: list[Event]) -> None:
        self.edits = [EventEdit(event) for event in events]
        self.problems: list[list[str] | None] = [None] * len(events)
        self.drops: list[Drop | None] = [None] * len(events)

    def problem(self, index: int, text: str) -> None:
        found = self.problems[index]
        if found is None:
            self.problems[index] = [text]
        else:
            found.append(text)


def build_enrich(settings: EnrichSettings, name: str = "enrich") -> Any:
    """The instance's function: ``apply(source, events)`` (async when it looks things up)."""
    steps: list[Callable[[_Batch], None]] = []

    if settings.user_agent is not None:
        ua = settings.user_agent
        ua_path = EventPath(ua.from_)
        parse = user_agent_fields(ua.cache_size)

        def user_agent_step(batch: _Batch) -> None:
            for index, edit in enumerate(batch.edits):
                value = ua_path.read(edit.event)
                if value is MISSING or value is None:
                    continue
                if not isinstance(value, str):
                    batch.problem(
                        index, f"user agent not parsed: {ua_path.text} is {kind_of(value)}"
                    )
                    continue
                changed = [
                    f"context.{group}.{field}"
                    for group, fields in parse(value)
                    for field in edit.merge_at("context", (group,), fields, overwrite=ua.overwrite)
                ]
                if changed:
                    edit.changes.append("user agent: " + ", ".join(changed))

        steps.append(user_agent_step)

    if settings.geo is not None:
        geo = settings.geo
        ip_path = EventPath(geo.from_)
        to_path = EventPath(geo.to, writable=True)
        locate = locator(open_database(geo.database), geo.language, geo.cache_size)

        def geo_step(batch: _Batch) -> None:
            for index, edit in enumerate(batch.edits):
                value = ip_path.read(edit.event)
                if value is MISSING or value is None:
                    continue
                if not isinstance(value, str):
                    batch.problem(index, f"not located: {ip_path.text} is {kind_of(value)}")
                    continue
                try:
                    location = locate(value)
                except NotAnAddress as error:
                    batch.problem(index, f"not located: {ip_path.text} {error}")
                    continue
                if location is None:
                    continue  # a private address, or one the database does not know
                changed = edit.merge_at(
                    to_path.attribute, to_path.rest, location, overwrite=geo.overwrite
                )
                if changed:
                    edit.changes.append(f"{to_path.text}: " + ", ".join(changed))

        steps.append(geo_step)

    service = LookupService(settings.lookup, name) if settings.lookup is not None else None

    def finish(source: Source, batch: _Batch, events: list[Event]) -> StageResult | None:
        out: list[Event] = []
        drops: list[Drop] = []
        outcomes: list[Outcome] = []
        touched = False
        for index, edit in enumerate(batch.edits):
            drop = batch.drops[index]
            if drop is not None:
                drops.append(drop)
                touched = True
                continue
            out.append(edit.event)
            if edit.changed:
                touched = True
                outcomes.append(
                    Outcome(
                        stage="transform",
                        status="transformed",
                        message_id=edit.event.message_id,
                        source_id=source.id,
                        reason=name,
                        detail="enriched " + "; ".join(edit.changes),
                        event=edit.event,
                    )
                )
            problems = batch.problems[index]
            if problems:
                touched = True
                outcomes.append(
                    Outcome(
                        stage="transform",
                        status="skipped",
                        message_id=edit.event.message_id,
                        source_id=source.id,
                        reason=name,
                        detail="; ".join(problems),
                        event=edit.event,
                    )
                )
        if not touched:
            return None
        return StageResult(events=out, dropped=drops, outcomes=outcomes)

    if service is None:

        def apply(source: Source, events: list[Event]) -> StageResult | None:
            batch = _Batch(events)
            for step in steps:
                step(batch)
            return finish(source, batch, events)

        return apply

    lookup = settings.lookup
    assert lookup is not None
    key_path = EventPath(lookup.key)
    lookup_to = EventPath(lookup.to, writable=True)

    async def apply_with_lookup(source: Source, events: list[Event]) -> StageResult | None:
        batch = _Batch(events)
        for step in steps:
            step(batch)
        keys: list[str | None] = []
        for index, edit in enumerate(batch.edits):
            value = key_path.read(edit.event)
            if value is MISSING or value is None:
                keys.append(None)
            elif isinstance(value, str | int) and not isinstance(value, bool):
                keys.append(str(value))
            else:
                keys.append(None)
                batch.problem(index, f"not looked up: {key_path.text} is {kind_of(value)}")
        wanted = list(dict.fromkeys(key for key in keys if key is not None))
        answers = await service.lookup_all(wanted) if wanted else {}
        for index, key in enumerate(keys):
            if key is None:
                continue
            answer = answers[key]
            edit = batch.edits[index]
            if isinstance(answer, Failed):
                why = f"lookup of {key_path.text} {key!r} failed: {answer.reason}"
                if lookup.on_failure == "drop":
                    batch.drops[index] = Drop(
                        event=edit.original,
                        reason=name,
                        detail=f"dropped by enrich {name!r}: {why} (on_failure: drop)",
                    )
                else:
                    batch.problem(index, f"{why}; passed on without it (on_failure: pass)")
                continue
            assert isinstance(answer, Found)
            if answer.data is None:
                continue  # the service has no entry for this key
            problem = edit.set(lookup_to, dict(answer.data))
            if problem is not None:
                batch.problem(index, f"lookup not stored: {problem}")
            else:
                edit.changes.append(f"{lookup_to.text} from the lookup")
        return finish(source, batch, events)

    apply_with_lookup.lookups = service  # type: ignore[attr-defined]
    return apply_with_lookup
