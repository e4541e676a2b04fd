"""The consent stage: every event judged by Segment's rules, stamped or dropped at collection.

An event is judged by, in order: its own ``context.consent.categoryPreferences``; else the
last preferences remembered for its userId or anonymousId; else, on a strict source, by an
empty object (nothing granted); else it is not judged (Segment: no consent, no enforcement).
What it was judged by is written into it as ``context.consent.categoryPreferences`` (Segment's
own shape), so the worker's routing holds it back from every sink whose categories it does not
grant, the warehouse included. An event no sink it feeds may receive is dropped here, never
buffered, and counted; every sink it will not reach is an outcome naming the missing categories.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from signalsmith import Drop, Event, Outcome, Sink, Source, StageResult
from signalsmith_consent.memory import ConsentMemory, Operation, Remembered
from signalsmith_consent.section import BuiltConsent
from signalsmith_consent.settings import PREFERENCE_UPDATED

NO_CONSENT = "no_consent"
PREFERENCES_REQUIRED = "consent_preferences_required"
PREFERENCES_REQUIRED_DETAIL = (
    f"a {PREFERENCE_UPDATED!r} event needs context.consent.categoryPreferences "
    "(an object of category: true|false)"
)

_encode = msgspec.json.Encoder()

# What a sink needs: its name and the categories (all must be granted).
Need = tuple[str, tuple[str, ...]]


def own_preferences(event: Event) -> dict[str, Any] | None:
    """The event's ``context.consent.categoryPreferences``, or None when it states none."""
    consent = event.context.get("consent")
    if not isinstance(consent, dict):
        return None
    preferences = consent.get("categoryPreferences")
    return preferences if isinstance(preferences, dict) else None


def missing(preferences: dict[str, Any], required: tuple[str, ...]) -> list[str]:
    """The categories of ``required`` that ``preferences`` do not grant (``true``)."""
    return [category for category in required if preferences.get(category) is not True]


def identities(event: Event) -> tuple[str, ...]:
    """The identities an event speaks for (and links): userId, anonymousId, an alias's
    previousId."""
    found = [event.user_id, event.anonymous_id]
    if event.type == "alias":
        found.append(event.previous_id)  # type: ignore[union-attr]
    return tuple(dict.fromkeys(value for value in found if value))


def _identities_of(events: list[Event]) -> list[tuple[str, ...]]:
    """Each event's identities; events of one user share one tuple (found once)."""
    found: dict[tuple[Any, ...], tuple[str, ...]] = {}
    result = []
    for event in events:
        key = (event.user_id, event.anonymous_id, event.type == "alias" and event.previous_id)  # type: ignore[union-attr]
        ids = found.get(key)
        if ids is None:
            ids = found[key] = identities(event)
        result.append(ids)
    return result


def stamped(event: Event, preferences: dict[str, Any]) -> Event:
    """``event`` carrying ``preferences`` as its ``context.consent.categoryPreferences``."""
    consent = event.context.get("consent")
    consent = dict(consent) if isinstance(consent, dict) else {}
    consent["categoryPreferences"] = preferences
    return msgspec.structs.replace(event, context={**event.context, "consent": consent})


def sink_needs(source: Source, built: BuiltConsent, sinks: Iterable[Sink]) -> tuple[Need, ...]:
    """The sinks ``source``'s events may reach, each with the categories it needs: the workspace
    destinations the source lists, and the sinks plugins registered (a warehouse takes every
    source; ``consent.sinks`` adds to what the plugin set)."""
    needs: list[Need] = list(built.destinations.get(source.id, ()))
    for sink in sinks:
        if sink.routing.sources is not None and source.id not in sink.routing.sources:
            continue
        required = tuple(dict.fromkeys((*sink.routing.consent, *built.sinks.get(sink.name, ()))))
        needs.append((sink.name, required))
    return tuple(needs)


class _Group:
    """A linked group of identities as this request knows it: its latest preferences."""

    __slots__ = ("members", "ms", "preferences")

    def __init__(self, members: set[str], preferences: dict[str, Any] | None, ms: int) -> None:
        self.members = members
        self.preferences = preferences
        self.ms = ms


class _View:
    """What is remembered for the identities of one request, kept up to date as its events
    set preferences and link identities, so each event is judged by the choices made before
    it, in the same request too."""

    def __init__(self, records: dict[str, Remembered]) -> None:
        # Bumped whenever a group is merged or set, so what was judged before can be reused.
        self.version = 0
        self.groups: dict[str, _Group] = {}
        for record in records.values():
            group = self.groups.get(record.identity)
            if group is None:
                group = _Group({record.identity, *record.linked}, record.preferences, record.ms)
                for member in group.members:
                    self.groups.setdefault(member, group)

    def latest(self, ids: tuple[str, ...]) -> _Group | None:
        best: _Group | None = None
        for identity in ids:
            group = self.groups.get(identity)
            if group is not None and group.preferences is not None:
                if best is None or group.ms > best.ms:
                    best = group
        return best

    def linked(self, ids: tuple[str, ...]) -> bool:
        first = self.groups.get(ids[0])
        return first is not None and all(self.groups.get(other) is first for other in ids[1:])

    def merge(self, ids: tuple[str, ...]) -> _Group:
        self.version += 1
        groups = list(dict.fromkeys(self.groups[i] for i in ids if i in self.groups))
        latest = self.latest(ids)
        members = set(ids).union(*(group.members for group in groups))
        merged = _Group(
            members,
            latest.preferences if latest is not None else None,
            latest.ms if latest is not None else 0,
        )
        for member in members:
            self.groups[member] = merged
        return merged


def _milliseconds(event: Event) -> int:
    return int(event.timestamp.timestamp() * 1000)


class ConsentStage:
    """Judges one request's events (the module docstring)."""

    def __init__(
        self,
        source: Source,
        built: BuiltConsent,
        needs: tuple[Need, ...],
        memory: ConsentMemory,
        *,
        observed: bool,
    ) -> None:
        self.source = source
        self.built = built
        self.needs = needs
        self.needing = tuple(need for need in needs if need[1])
        self.memory = memory
        self.remembering = built.remember
        self.strict = source.id in built.strict
        self.observed = observed

    async def run(self, events: list[Event]) -> StageResult | None:
        # Each event's identities, found once (none are needed when nothing is remembered).
        identities_of = _identities_of(events) if self.remembering else None
        view = await self._remembered(identities_of)
        # For events without their own preferences: what their identities were judged by, at
        # which version of the view (a batch is mostly one user's events: judged once).
        judged: dict[tuple[str, ...], tuple[int, _Group | None]] = {}
        kept: list[Event] = []
        dropped: list[Drop] = []
        outcomes: list[Outcome] = []
        operations: list[Operation] = []
        changed = False
        for position, event in enumerate(events):
            own = own_preferences(event)
            if own is None and event.type == "track" and event.event == PREFERENCE_UPDATED:  # type: ignore[union-attr]
                dropped.append(
                    Drop(
                        event=event,
                        reason=PREFERENCES_REQUIRED,
                        detail=PREFERENCES_REQUIRED_DETAIL,
                    )
                )
                changed = True
                continue
            ids = identities_of[position] if identities_of is not None else ()
            latest: _Group | None = None
            if view is not None and ids:
                known = judged.get(ids) if own is None else None
                if known is not None and known[0] == view.version:
                    latest = known[1]
                else:
                    self._remember(view, event, ids, own, operations)
                    if own is None:
                        latest = view.latest(ids)
                        judged[ids] = (view.version, latest)
            judged_by = own
            if judged_by is None:
                if latest is not None:
                    judged_by = latest.preferences
                elif self.strict:
                    judged_by = {}
                if judged_by is not None:
                    event = stamped(event, judged_by)
                    changed = True
            if judged_by is None or not self.needing:
                kept.append(event)
                continue
            refused = [
                (name, lacking)
                for name, required in self.needing
                if (lacking := missing(judged_by, required))
            ]
            if refused and len(refused) == len(self.needs):
                dropped.append(Drop(event=event, reason=NO_CONSENT, detail=_no_sink(refused)))
                changed = True
                continue
            kept.append(event)
            if self.observed:
                outcomes += [
                    Outcome(
                        stage="consent",
                        status="skipped",
                        message_id=event.message_id,
                        source_id=self.source.id,
                        reason=NO_CONSENT,
                        detail=f"consent: {', '.join(lacking)} not granted",
                        sink=name,
                        event=event,
                    )
                    for name, lacking in refused
                ]
        counted = sum(1 for drop in dropped if drop.reason == NO_CONSENT)
        if operations or counted:
            await self.memory.write(
                operations,
                ttl_seconds=self.built.ttl,
                dropped={self.source.id: counted} if counted else None,
            )
        if not changed and not outcomes:
            return None
        return StageResult(events=kept, dropped=dropped, outcomes=outcomes)

    async def _remembered(self, identities_of: list[tuple[str, ...]] | None) -> _View | None:
        if identities_of is None:
            return None
        wanted = list(dict.fromkeys(i for ids in identities_of for i in ids))
        return _View(await self.memory.read(wanted))

    def _remember(
        self,
        view: _View,
        event: Event,
        ids: tuple[str, ...],
        own: dict[str, Any] | None,
        operations: list[Operation],
    ) -> None:
        """Queue the writes this event makes: its preferences when they change the user's, and
        the link between its identities when they are not linked yet."""
        if len(ids) > 1 and not view.linked(ids):
            view.merge(ids)
            operations.append(Operation(ids=list(ids)))
        if own is None:
            return
        ms = _milliseconds(event)
        latest = view.latest(ids)
        if latest is not None and (latest.preferences == own or latest.ms > ms):
            return
        group = view.merge(ids)  # bumps the view's version
        group.preferences, group.ms = own, ms
        operations.append(
            Operation(
                ids=list(ids),
                p=_encode.encode(own).decode(),
                since=event.timestamp.isoformat().replace("+00:00", "Z"),
                ms=ms,
                by=event.message_id,
                src=self.source.id,
            )
        )


def _no_sink(refused: list[tuple[str, list[str]]]) -> str:
    return "no sink may receive it: " + "; ".join(
        f"{name} needs {', '.join(lacking)}" for name, lacking in refused
    )
