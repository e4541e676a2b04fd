"""The function transform: a user's module imported from a directory of its own, called with
each batch (the contract of plans-config-functions.md section 5.4) in a worker thread within a
time budget; its errors and overruns counted and reported, never the collector's."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from signalsmith.testing import identify, track
from signalsmith.testing.transforms import build_chains, run_chain, workspace_errors
from signalsmith_transform_function import plugin

PLUGIN = (plugin, "transform-function")

FUNCTIONS = """
import time
from signalsmith_transform_function import DropEvent

def transform_event(event, ctx):
    name = event.get("event")
    if name == "Drop me":
        return None
    if name == "Raise drop":
        raise DropEvent("internal traffic")
    if name == "Fail":
        return 1 / 0
    if name == "Bad type":
        return {**event, "userId": 42}
    if name == "Fan out":
        return [event, {**event, "event": "Fanned"}]
    if name == "Same":
        return event
    event["properties"]["seen_by"] = ctx.settings.get("tag", "?")
    event["properties"]["source"] = ctx.source["id"]
    event["properties"]["meta"] = ctx(event)["eventType"]
    return event

def transform_batch(events, ctx):
    kept = [e for e in events if e.get("event") != "Drop me"]
    for e in kept:
        e["properties"]["batched"] = len(events)
    return kept + [{"type": "track", "event": "Summary", "userId": "system", "messageId": "sum-1"}]

CALLED = []

def slow(event, ctx):
    CALLED.append(event.get("event"))
    time.sleep(float(ctx.settings["sleep"]))
    return event

def not_a_function():
    pass

value = 3
"""


@pytest.fixture
def functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of user functions in a directory of its own, importable as ``<name>``."""
    name = f"user_functions_{uuid.uuid4().hex[:8]}"
    directory = tmp_path / "functions"
    directory.mkdir()
    (directory / f"{name}.py").write_text(textwrap.dedent(FUNCTIONS))
    monkeypatch.syspath_prepend(str(directory))
    yield name
    sys.modules.pop(name, None)


def document(settings: str) -> str:
    return f"""\
version: 1
sources:
  web: {{transforms: [fn]}}
transforms:
  fn:
    type: function
    settings: {settings}
"""


def chain(settings: str) -> list:
    return list(build_chains(document(settings), PLUGIN)["web"])


async def test_event_functions_replace_drop_fan_out_and_report_each(functions: str) -> None:
    [fn] = chain(f"{{function: '{functions}:transform_event', settings: {{tag: t1}}}}")
    messages = [
        track("Plain"),
        track("Drop me"),
        track("Raise drop"),
        track("Fan out"),
        track("Same"),
        identify(),
    ]
    result = await run_chain([fn], messages)
    names = [getattr(e, "event", e.type) for e in result.events]
    assert names == ["Plain", "Fan out", "Fanned", "Same", "identify"]
    plain = result.events[0]
    assert plain.properties == {"revenue": 19.99, "seen_by": "t1", "source": "web", "meta": "track"}
    # Fan-out copies get ids of their own, so the buffer keeps both.
    assert result.events[1].message_id == messages[3]["messageId"]
    assert result.events[2].message_id == messages[3]["messageId"] + "-1"
    dropped = {d.event.message_id: d.detail for _, d in result.dropped}
    assert dropped[messages[1]["messageId"]] == "dropped by function 'fn': returned nothing"
    assert dropped[messages[2]["messageId"]] == (
        "dropped by function 'fn': raised DropEvent: internal traffic"
    )
    details = {(o.message_id, o.status): o.detail for o in result.outcomes}
    assert details[(messages[0]["messageId"], "transformed")] == "function 'fn': changed properties"
    assert (messages[4]["messageId"], "transformed") not in details  # returned unchanged
    assert result.outcomes[-1].reason == "fn"


async def test_errors_pass_the_event_on_or_drop_it_and_are_counted(functions: str) -> None:
    [passing] = chain(f"{{function: '{functions}:transform_event'}}")
    fail, bad = track("Fail"), track("Bad type")
    result = await run_chain([passing], [fail, bad, track("Plain")])
    assert [e.event for e in result.events] == ["Fail", "Bad type", "Plain"]
    skipped = {o.message_id: o.detail for o in result.outcomes if o.status == "skipped"}
    assert skipped[fail["messageId"]].startswith(
        "function 'fn' failed: ZeroDivisionError: division by zero ("
    )
    assert ".py line 12)" in skipped[fail["messageId"]]
    assert (
        "returned an invalid event: Expected `str | null`, got `int`" in skipped[bad["messageId"]]
    )
    assert passing.apply.stats.errors == 2
    [dropping] = chain(f"{{function: '{functions}:transform_event', on_error: drop}}")
    result = await run_chain([dropping], [fail, track("Plain")])
    assert [e.event for e in result.events] == ["Plain"]
    [(_, drop)] = result.dropped
    assert drop.reason == "fn" and "(on_error: drop)" in drop.detail


async def test_batch_functions_pair_outputs_by_message_id(functions: str) -> None:
    [fn] = chain(f"{{function: '{functions}'}}")  # the module alone: its transform_batch
    kept, gone = track("Keep"), track("Drop me")
    result = await run_chain([fn], [kept, gone])
    assert [(e.message_id, e.event) for e in result.events] == [
        (kept["messageId"], "Keep"),
        ("sum-1", "Summary"),
    ]
    assert result.events[0].properties["batched"] == 2
    assert result.events[1].project_id == "web"  # the function cannot re-attribute the source
    [(_, drop)] = result.dropped
    assert drop.detail == "dropped by function 'fn': not returned by the batch function"


async def test_a_slow_function_is_not_waited_for_past_its_budget(functions: str) -> None:
    [fn] = chain(
        f"{{function: '{functions}:slow', mode: event, budget_seconds: 0.2, max_overrunning: 1,"
        " settings: {sleep: 1.5}}"
    )
    messages = [track("A"), track("B")]
    result = await run_chain([fn], messages)
    stats = fn.apply.stats
    # Back while the call still runs: the collector stopped waiting at the budget.
    assert stats.overrunning == 1
    assert [e.event for e in result.events] == ["A", "B"]  # on_timeout: pass
    assert {o.status for o in result.outcomes} == {"skipped"}
    assert "did not finish within 0.2s; passed on unchanged" in (result.outcomes[0].detail or "")
    assert stats.timeouts == 1
    # One call still runs past its budget: the next batch is not handed to the function.
    second = await run_chain([fn], [track("C")])
    assert "not run: 1 earlier calls are still running" in (second.outcomes[0].detail or "")
    assert stats.skipped_batches == 1
    # The overrunning call stops at its current event (ctx.cancelled), then frees its thread.
    for _ in range(100):
        if not stats.overrunning:
            break
        await asyncio.sleep(0.05)
    assert stats.overrunning == 0
    called = sys.modules[functions].CALLED
    assert called == ["A"]  # B was never run (ctx.cancelled), nor C (skipped)


async def test_on_timeout_drop_drops_the_batch(functions: str) -> None:
    [fn] = chain(
        f"{{function: '{functions}:slow', mode: event, budget_seconds: 0.1, on_timeout: drop,"
        " settings: {sleep: 0.5}}"
    )
    result = await run_chain([fn], [track("A")])
    assert result.events == []
    [(_, drop)] = result.dropped
    assert drop.detail == "dropped by function 'fn': did not finish within 0.1s (on_timeout: drop)"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            "{function: 'no_such_module_here:f'}",
            "transforms.fn.settings.function: module 'no_such_module_here' does not import in this "
            "process (ModuleNotFoundError",
        ),
        (
            "{function: 'MODULE:missing'}",
            "transforms.fn.settings.function: module 'MODULE' has no missing",
        ),
        (
            "{function: 'MODULE:value'}",
            "transforms.fn.settings.function: MODULE:value is not a function",
        ),
        (
            "{function: 'MODULE:slow'}",
            "transforms.fn.settings.mode: say whether slow takes one event",
        ),
        (
            "{function: 'MODULE:slow', mode: event, budget_seconds: 0}",
            "transforms.fn.settings.budget_seconds: expected `float` > 0",
        ),
    ],
)
def test_bad_settings_are_refused_with_their_path(
    functions: str, settings: str, expected: str
) -> None:
    [error] = workspace_errors(document(settings.replace("MODULE", functions)), PLUGIN)
    assert error.startswith(expected.replace("MODULE", functions)), error
