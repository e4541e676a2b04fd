"""The ``function`` transform: a user's function, imported by ``module:function``, called with
each batch in a worker thread, within a time budget.

Python cannot stop a thread, so the budget is enforced by not waiting: the collector waits at
most ``budget_seconds`` for the batch, then goes on with the batch as ``on_timeout`` says (pass
it unchanged, or drop it) while the call runs to its end in its thread, its result thrown away.
``ctx.cancelled`` is set then, and a per-event function is not called for the rest of the
batch. A call still running past its budget holds a thread: once ``max_overrunning`` calls do,
batches are not handed to the function at all (``on_timeout`` applies at once) until one ends,
so a function stuck for good costs a few threads, never the collector. A function that holds
the GIL in pure-Python loops still slows the collector while it runs: keep functions short.

Errors are the function's, never the collector's: an exception in the call for one event
(per-event functions) or for the batch is counted, reported in an outcome with its last frame,
and ``on_error`` decides (pass the event on unchanged, or drop it).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

import msgspec

from signalsmith import (
    Alias,
    Drop,
    Event,
    Group,
    Identify,
    Outcome,
    Page,
    Screen,
    SettingsError,
    Source,
    StageResult,
    Track,
    to_segment_dict,
)
from signalsmith_transform_function.contract import Context, DropEvent

log = logging.getLogger("signalsmith.transform.function")

_CLASSES: dict[str, type[Any]] = {
    "track": Track,
    "identify": Identify,
    "page": Page,
    "screen": Screen,
    "group": Group,
    "alias": Alias,
}
_WIRE_FIELDS = {
    kind: frozenset(cls.__struct_encode_fields__) - {"extra"} for kind, cls in _CLASSES.items()
}
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Event)
_BATCH_NAMES = ("transform_batch", "transformBatch")
_EVENT_NAMES = ("transform_event", "transformEvent")


class FunctionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # ``module:function``, or ``module`` alone for its transform_batch / transform_event.
    function: str
    # Whether the function takes one event or the batch; by default from its name.
    mode: Literal["event", "batch"] | None = None
    # How long the collector waits for one batch, in seconds.
    budget_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    # What happens to an event whose call raised: passed on unchanged, or dropped.
    on_error: Literal["pass", "drop"] = "pass"
    # What happens to a batch the function did not finish within the budget.
    on_timeout: Literal["pass", "drop"] = "pass"
    # Calls running past their budget at once before batches skip the function.
    max_overrunning: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    # Handed to the function as ctx.settings.
    settings: dict[str, Any] = {}

    def __post_init__(self) -> None:
        load_function(self)


def load_function(settings: FunctionSettings) -> tuple[Callable[..., Any], str, int]:
    """The function, its mode and how many arguments it takes; ``SettingsError`` otherwise."""
    module_name, _, attribute = settings.function.partition(":")
    module_name = module_name.strip()
    if not module_name:
        raise SettingsError(("function",), "write the function as module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise SettingsError(
            ("function",),
            f"module {module_name!r} does not import in this process "
            f"({type(error).__name__}: {error}); install it, or put its directory on PYTHONPATH",
        ) from None
    names = [attribute.strip()] if attribute.strip() else [*_BATCH_NAMES, *_EVENT_NAMES]
    function = next((getattr(module, n) for n in names if hasattr(module, n)), None)
    found = next((n for n in names if hasattr(module, n)), names[0])
    if function is None:
        raise SettingsError(("function",), f"module {module_name!r} has no {' or '.join(names)}")
    if not callable(function):
        raise SettingsError(("function",), f"{module_name}:{found} is not a function")
    mode = settings.mode
    if mode is None:
        if found in _BATCH_NAMES:
            mode = "batch"
        elif found in _EVENT_NAMES:
            mode = "event"
        else:
            raise SettingsError(
                ("mode",),
                f"say whether {found} takes one event or the batch: `mode: event` or "
                "`mode: batch` (or name it transform_event / transform_batch)",
            )
    try:
        parameters = [
            p
            for p in inspect.signature(function).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        arity = 1 if len(parameters) == 1 else 2
    except (TypeError, ValueError):
        arity = 2
    return function, mode, arity


class FunctionStats:
    """Counts of one instance, kept for as long as it is built (logged, and for tests)."""

    __slots__ = ("_lock", "batches", "errors", "overrunning", "skipped_batches", "timeouts")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.errors = 0
        self.timeouts = 0
        self.skipped_batches = 0
        self.overrunning = 0

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)


class _Result:
    """What one event became: events out, a drop reason, an error, or nothing (not run)."""

    __slots__ = ("detail", "dropped", "error", "events")

    def __init__(self) -> None:
        self.events: list[Event] | None = None
        self.dropped: str | None = None
        self.error: str | None = None
        self.detail: str | None = None


def _where(error: BaseException) -> str:
    """``ZeroDivisionError: division by zero (fn.py line 12)``: the error and its last frame."""
    frames = traceback.extract_tb(error.__traceback__)
    last = f" ({frames[-1].filename.rsplit('/', 1)[-1]} line {frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{last}"


def to_event(body: Any, original: Event) -> Event:
    """A dict a function returned as an event; ``ValueError`` saying what is wrong with it."""
    if not isinstance(body, dict):
        raise ValueError(f"returned {type(body).__name__}, not an event object")
    kind = body.get("type", original.type)
    fields = _WIRE_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ValueError(f"returned an event of unknown type {kind!r}")
    known: dict[str, Any] = {"type": kind}
    extra: dict[str, Any] = {}
    for key, value in body.items():
        if key in fields:
            known[key] = value
        elif key != "type":
            extra[key] = value
    known.setdefault("messageId", original.message_id)
    known.setdefault("receivedAt", original.received_at)
    known.setdefault("timestamp", original.timestamp)
    # The source an event came from is the collector's to say, not the function's.
    known["projectId"] = original.project_id
    if extra:
        known["extra"] = extra
    try:
        # Through JSON: three times faster than msgspec.convert on these dicts (timestamps).
        return _DECODER.decode(_ENCODER.encode(known))
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError) as error:
        raise ValueError(f"returned an invalid event: {error}") from None


def _changed_fields(before: Event, after: Event) -> list[str]:
    if type(before) is not type(after):
        return ["type"]
    return [
        wire
        for wire, old, new in zip(
            before.__struct_encode_fields__,
            msgspec.structs.astuple(before),
            msgspec.structs.astuple(after),
            strict=True,
        )
        if old != new
    ]


def build_function(settings: FunctionSettings, name: str = "function") -> Any:
    """The instance's function: ``await apply(source, events)``."""
    function, mode, arity = load_function(settings)
    budget = settings.budget_seconds
    stats = FunctionStats()
    executor = ThreadPoolExecutor(
        max_workers=settings.max_overrunning + 1, thread_name_prefix=f"function-{name}"
    )
    user_settings = dict(settings.settings)

    def call(argument: Any, ctx: Context) -> Any:
        return function(argument) if arity == 1 else function(argument, ctx)

    def outputs(returned: Any, original: Event, taken: set[str]) -> list[Event]:
        if returned is None:
            return []
        items = returned if isinstance(returned, list) else [returned]
        made: list[Event] = []
        for item in items:
            event = to_event(item, original)
            if event.message_id in taken:
                # A fan-out's copies need ids of their own, or the buffer would keep one.
                event = msgspec.structs.replace(
                    event, message_id=f"{original.message_id}-{len(taken)}"
                )
            taken.add(event.message_id)
            made.append(event)
        return made

    def run_events(events: list[Event], ctx: Context) -> list[_Result]:
        results = []
        for event in events:
            result = _Result()
            results.append(result)
            if ctx.cancelled.is_set():
                continue  # the budget is spent: the rest is not run
            try:
                returned = call(to_segment_dict(event), ctx)
                result.events = outputs(returned, event, set())
                if not result.events:
                    result.dropped = "returned nothing"
            except DropEvent as drop:
                result.dropped = f"raised DropEvent: {drop}" if str(drop) else "raised DropEvent"
            except Exception as error:
                result.error = _where(error)
        return results

    def run_batch(events: list[Event], ctx: Context) -> list[_Result]:
        results = [_Result() for _ in events]
        try:
            returned = call([to_segment_dict(event) for event in events], ctx)
            if not isinstance(returned, list):
                raise ValueError(f"returned {type(returned).__name__}, not a list of events")
        except DropEvent as drop:
            for result in results:
                result.dropped = f"raised DropEvent: {drop}"
            return results
        except Exception as error:
            where = _where(error)
            for result in results:
                result.error = where
            return results
        by_id = {event.message_id: index for index, event in enumerate(events)}
        new: list[Event] = []
        for item in returned:
            index = by_id.get(item.get("messageId")) if isinstance(item, dict) else None
            original = events[index] if index is not None else events[0]
            try:
                converted = to_event(item, original)
            except ValueError as error:
                if index is not None:
                    results[index].error = str(error)
                else:
                    results[0].error = f"an output without an input's messageId {error}"
                continue
            if index is None:
                new.append(converted)
            else:
                result = results[index]
                result.events = [*(result.events or []), converted]
        for result in results:
            if result.events is None and result.error is None:
                result.dropped = "not returned by the batch function"
        if new:
            # Events the function made up go after the others, reported as its additions.
            added = _Result()
            added.events = new
            added.detail = f"added by the batch function ({len(new)} events)"
            results.append(added)
        return results

    runner = run_batch if mode == "batch" else run_events

    def finished(_: object) -> None:
        stats.add(overrunning=-1)

    async def apply(source: Source, events: list[Event]) -> StageResult | None:
        stats.add(batches=1)
        if stats.overrunning >= settings.max_overrunning:
            stats.add(skipped_batches=1)
            return _timed_out(
                source,
                events,
                f"not run: {stats.overrunning} earlier calls are still running past their "
                f"budget of {budget:g}s",
            )
        cancelled = threading.Event()
        ctx = Context(
            source={"id": source.id, "name": source.name},
            settings=user_settings,
            instance=name,
            workspace_version=source.pipeline.version if source.pipeline else None,
            deadline=time.monotonic() + budget,
            cancelled=cancelled,
        )
        future = executor.submit(runner, events, ctx)
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(future), budget)
        except TimeoutError:
            cancelled.set()
            if not future.done():
                stats.add(overrunning=1)
                future.add_done_callback(finished)
            stats.add(timeouts=1)
            log.warning(
                "function %s (%s) did not finish a batch of %d within %gs (%d timeouts so far)",
                name,
                settings.function,
                len(events),
                budget,
                stats.timeouts,
            )
            return _timed_out(source, events, f"did not finish within {budget:g}s")
        return _report(source, events, results)

    def _timed_out(source: Source, events: list[Event], why: str) -> StageResult:
        if settings.on_timeout == "drop":
            detail = f"dropped by function {name!r}: {why} (on_timeout: drop)"
            return StageResult(
                events=[], dropped=[Drop(event=e, reason=name, detail=detail) for e in events]
            )
        detail = f"function {name!r} {why}; passed on unchanged (on_timeout: pass)"
        return StageResult(
            events=events,
            outcomes=[
                Outcome(
                    stage="transform",
                    status="skipped",
                    message_id=event.message_id,
                    source_id=source.id,
                    reason=name,
                    detail=detail,
                    event=event,
                )
                for event in events
            ],
        )

    def _report(source: Source, events: list[Event], results: list[_Result]) -> StageResult | None:
        kept: list[Event] = []
        drops: list[Drop] = []
        outcomes: list[Outcome] = []
        errors = 0
        first_error = ""
        for position, result in enumerate(results):
            # A batch function's additions come last, paired with no input.
            event = events[position] if position < len(events) else result.events[0]  # type: ignore[index]
            if result.error is not None:
                errors += 1
                first_error = first_error or result.error
                if settings.on_error == "drop":
                    drops.append(
                        Drop(
                            event=event,
                            reason=name,
                            detail=f"dropped by function {name!r}: {result.error} (on_error: drop)",
                        )
                    )
                    continue
                kept.append(event)
                outcomes.append(
                    Outcome(
                        stage="transform",
                        status="skipped",
                        message_id=event.message_id,
                        source_id=source.id,
                        reason=name,
                        detail=f"function {name!r} failed: {result.error}; passed on unchanged "
                        "(on_error: pass)",
                        event=event,
                    )
                )
                continue
            if result.dropped is not None:
                drops.append(
                    Drop(
                        event=event,
                        reason=name,
                        detail=f"dropped by function {name!r}: {result.dropped}",
                    )
                )
                continue
            if result.events is None:  # not run (the budget ran out): unchanged
                kept.append(event)
                continue
            if len(result.events) == 1 and result.events[0] == event and result.detail is None:
                kept.append(event)  # returned as it came: no change to report
                continue
            for index, made in enumerate(result.events):
                kept.append(made)
                if result.detail is not None:
                    what = result.detail
                elif len(result.events) > 1:
                    what = f"fan-out {index + 1} of {len(result.events)}"
                else:
                    what = "changed " + (", ".join(_changed_fields(event, made)) or "nothing")
                outcomes.append(
                    Outcome(
                        stage="transform",
                        status="transformed",
                        message_id=made.message_id,
                        source_id=source.id,
                        reason=name,
                        detail=f"function {name!r}: {what}",
                        event=made,
                    )
                )
        if errors:
            stats.add(errors=errors)
            log.warning(
                "function %s (%s) failed on %d of %d events (%d errors so far); first: %s",
                name,
                settings.function,
                errors,
                len(events),
                stats.errors,
                first_error,
            )
        if not drops and not outcomes and len(kept) == len(events):
            return None
        return StageResult(events=kept, dropped=drops, outcomes=outcomes)

    apply.stats = stats  # type: ignore[attr-defined]
    return apply
