"""The ``filter`` transform: drop events by condition, and sample by a stable hash of the user.

Conditions are FQL (``signalsmith.parse_condition``, Segment's filter language), parsed when the
workspace is checked and again, once, when the instance is built; evaluating one per event is a
few function calls. An event is dropped when ``drop`` holds, when ``keep`` does not hold, or when
its user falls outside the ``sample``; every drop names the instance and the reason.

Sampling is deterministic: the point of a user is the first 8 bytes of
``SHA-256(seed + "\\x00" + key)``, read as a big-endian integer and divided by 2**64 (a number in
[0, 1)); the event is kept when the point is below ``fraction``. The key is ``userId``, else
``anonymousId`` (or the field ``by`` names), so a user is always in or always out, in every
collector, across restarts, and a larger fraction keeps everyone a smaller one kept.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import msgspec

from signalsmith import (
    MISSING,
    Condition,
    Drop,
    Event,
    EventPath,
    FqlError,
    Outcome,
    PathError,
    SettingsError,
    Source,
    StageResult,
    parse_condition,
)

_SCALE = float(2**64)


def sample_point(key: str, seed: str = "") -> float:
    """Where ``key`` falls in [0, 1): the same for the same key and seed, everywhere."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def _condition(text: str | None, setting: tuple[str, ...]) -> Condition | None:
    if text is None:
        return None
    try:
        return parse_condition(text)
    except FqlError as error:
        raise SettingsError(setting, f"the condition does not parse: {error}") from None


class Sample(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Keep ``fraction`` of users (0.1: one in ten), the same users every time."""

    fraction: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    # The field whose value is hashed; None: userId, else anonymousId.
    by: str | None = None
    # Changes which users a fraction keeps (two filters with different seeds sample
    # independently).
    seed: str = ""
    # Only events for which this FQL condition holds are sampled; the others pass.
    when: str | None = None

    def __post_init__(self) -> None:
        _condition(self.when, ("when",))
        if self.by is not None:
            try:
                EventPath(self.by)
            except PathError as error:
                raise SettingsError(("by",), str(error)) from None


class FilterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Drop events for which ``drop`` holds, drop those for which ``keep`` does not, and keep a
    stable ``sample`` of users. At least one is needed."""

    drop: str | None = None
    keep: str | None = None
    sample: Sample | None = None

    def __post_init__(self) -> None:
        if self.drop is None and self.keep is None and self.sample is None:
            raise SettingsError((), "a filter needs `drop`, `keep` or `sample`")
        _condition(self.drop, ("drop",))
        _condition(self.keep, ("keep",))


_USER_ID = EventPath("userId")
_ANONYMOUS_ID = EventPath("anonymousId")


def build_filter(settings: FilterSettings, name: str = "filter") -> Any:
    """The instance's function: ``apply(source, events)``, None when it keeps every event."""
    drop = _condition(settings.drop, ("drop",))
    keep = _condition(settings.keep, ("keep",))
    sample = settings.sample
    sample_when = _condition(sample.when, ("sample", "when")) if sample else None
    sample_by = EventPath(sample.by) if sample and sample.by else None
    fraction = sample.fraction if sample else 1.0
    seed = sample.seed if sample else ""
    percent = f"{fraction * 100:g}%"
    dropped_by_drop = f"dropped by filter {name!r}: drop condition holds: {settings.drop}"
    dropped_by_keep = f"dropped by filter {name!r}: keep condition does not hold: {settings.keep}"

    def sample_key(event: Event) -> Any:
        if sample_by is not None:
            return sample_by.read(event)
        key = _USER_ID.read(event)
        return key if key is not MISSING else _ANONYMOUS_ID.read(event)

    def apply(source: Source, events: list[Event]) -> StageResult | None:
        kept: list[Event] = []
        drops: list[Drop] = []
        outcomes: list[Outcome] = []
        for event in events:
            if drop is not None and drop(event):
                drops.append(Drop(event=event, reason=name, detail=dropped_by_drop))
                continue
            if keep is not None and not keep(event):
                drops.append(Drop(event=event, reason=name, detail=dropped_by_keep))
                continue
            if sample is not None and (sample_when is None or sample_when(event)):
                key = sample_key(event)
                if key is MISSING or key is None:
                    outcomes.append(
                        Outcome(
                            stage="transform",
                            status="skipped",
                            message_id=event.message_id,
                            source_id=source.id,
                            reason=name,
                            detail=f"not sampled: the event has no {sample.by or 'userId or anonymousId'}; kept",
                            event=event,
                        )
                    )
                elif (
                    sample_point(
                        key if isinstance(key, str) else msgspec.json.encode(key).decode(), seed
                    )
                    >= fraction
                ):
                    drops.append(
                        Drop(
                            event=event,
                            reason=name,
                            detail=f"dropped by filter {name!r}: {key!r} is outside the {percent} sample",
                        )
                    )
                    continue
            kept.append(event)
        if not drops and not outcomes:
            return None
        return StageResult(events=kept, dropped=drops, outcomes=outcomes)

    return apply
