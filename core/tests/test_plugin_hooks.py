"""The plugin contract: every hook is documented, and the core calls hooks as documented.

Stage order, chaining, fan-out isolation, gate failures, duplicate capability names and plugin
selection are checked by driving real requests through the Litestar app into a real Redis.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import inspect
import json
import logging
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import pluggy
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from signalsmith import hookimpl, hookspecs
from signalsmith.boot import plugin_manager_for
from signalsmith.buffer import seen_key_prefix
from signalsmith.cli import build_cli
from signalsmith.config import Settings
from signalsmith.hooks import Hooks
from signalsmith.model import Event, Track
from signalsmith.plugins import PluginConfigError, build_plugin_manager, plugin_infos
from signalsmith.records import (
    Credentials,
    Drop,
    Outcome,
    PluginInfo,
    Refusal,
    Sink,
    Source,
    StageResult,
    TransformType,
)
from signalsmith.runtime import Runtime
from signalsmith.stream import dead_letter_key, stream_key
from signalsmith.testing import (
    StaticKeys,
    capture_sink_plugin,
    collector_client,
    plugin_manager,
    running_worker,
    track,
)
from signalsmith.testing.stream import read_events

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugin-hooks.md"

WRITE_KEY = "wk-plugin-hooks"
SOURCE = Source(id="src-plugin-hooks", name="Plugin hooks test source")
AUTH_HEADERS = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


# --- the reference documents every hook ----------------------------------------------------


def hookspec_functions() -> dict[str, Callable[..., Any]]:
    return {
        name: function
        for name, function in vars(hookspecs).items()
        if callable(function) and hasattr(function, "signalsmith_spec")
    }


HOOK_NAMES = sorted(hookspec_functions())
HOOK_HEADING = re.compile(r"^### `(?P<name>[A-Za-z_][A-Za-z0-9_]*)`[ \t]*$", re.MULTILINE)
ANY_SECTION_HEADING = re.compile(r"^#{2,3} ", re.MULTILINE)
PYTHON_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)


def documented_sections() -> dict[str, str]:
    """Each "### `name`" heading of the reference, with the text up to the next heading."""
    text = DOCS.read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for heading in HOOK_HEADING.finditer(text):
        following = ANY_SECTION_HEADING.search(text, heading.end())
        end = following.start() if following else len(text)
        sections[heading.group("name")] = text[heading.end() : end]
    return sections


def documented_signature(section: str) -> ast.FunctionDef:
    """The ``def name(...) -> Return`` in the first python block of a section, parsed."""
    block = PYTHON_BLOCK.search(section)
    assert block is not None, "no ```python block with the hook's signature"
    source = block.group("code").strip()
    if not source.endswith(":") and not source.endswith("..."):
        source += ": ..."
    tree = ast.parse(source)
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef), f"not a def: {source!r}"
    return function


def normalised_annotation(annotation: str) -> str:
    return ast.unparse(ast.parse(annotation, mode="eval"))


def test_docs_exist() -> None:
    assert DOCS.is_file(), f"{DOCS} is missing"


def test_every_hookspec_is_documented() -> None:
    missing = sorted(set(HOOK_NAMES) - set(documented_sections()))
    assert not missing, f"hooks without a '### `name`' section in {DOCS.name}: {missing}"


def test_no_documented_hook_is_stale() -> None:
    stale = sorted(set(documented_sections()) - set(HOOK_NAMES))
    assert not stale, f"{DOCS.name} documents hooks that signalsmith.hookspecs lacks: {stale}"


@pytest.mark.parametrize("hook_name", HOOK_NAMES)
def test_documented_signature_matches_hookspec(hook_name: str) -> None:
    section = documented_sections().get(hook_name)
    assert section is not None, f"{hook_name} is not documented in {DOCS.name}"
    documented = documented_signature(section)
    spec = inspect.signature(hookspec_functions()[hook_name])

    assert documented.name == hook_name
    assert [arg.arg for arg in documented.args.args] == list(spec.parameters), (
        f"{DOCS.name} documents {hook_name}'s parameters differently from the hookspec"
    )
    # The annotations too, so that "the exact signature" stays exact.
    documented_types = {
        arg.arg: ast.unparse(arg.annotation) if arg.annotation else None
        for arg in documented.args.args
    }
    spec_types = {
        name: normalised_annotation(str(parameter.annotation))
        for name, parameter in spec.parameters.items()
    }
    assert documented_types == spec_types
    assert documented.returns is not None, f"{hook_name}: the documented signature has no return"
    assert ast.unparse(documented.returns) == normalised_annotation(str(spec.return_annotation))


# --- plugins for the pipeline tests ----------------------------------------------------------


def static_keys() -> tuple[object, str]:
    return StaticKeys({WRITE_KEY: SOURCE}), "static-keys"


def event_names(events: list[Event]) -> list[str]:
    return [event.event if isinstance(event, Track) else event.type for event in events]


class StageRecorder:
    """Implements every collector hook and records each call with what it saw.

    The stage hooks also record the stream's length at the moment they run, through the
    runtime's own Redis client, so the test can tell what was buffered before which hook.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.runtime: Runtime | None = None

    async def _stream_length(self) -> int:
        assert self.runtime is not None, "startup was not called before the request"
        return await self.runtime.redis.xlen(self.runtime.key("events"))

    @hookimpl
    def startup(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.calls.append(("startup", runtime.role))

    @hookimpl(tryfirst=True)
    def authenticate(self, credentials: Credentials) -> Source | None:
        self.calls.append(("authenticate", credentials.write_keys))
        return None  # let StaticKeys answer

    @hookimpl
    def admit_events(self, source: Source, count: int, path: str) -> None:
        self.calls.append(("admit_events", (source.id, count, path)))

    @hookimpl
    async def validate_events(self, source: Source, events: list[Event]) -> None:
        self.calls.append(("validate_events", (event_names(events), await self._stream_length())))

    @hookimpl
    def transform_events(self, source: Source, events: list[Event]) -> StageResult:
        self.calls.append(("transform_events", event_names(events)))
        renamed = [msgspec.structs.replace(event, event="Renamed Event") for event in events]
        return StageResult(
            events=renamed,
            outcomes=[
                Outcome(
                    stage="transform",
                    status="transformed",
                    message_id=event.message_id,
                    source_id=source.id,
                )
                for event in renamed
            ],
        )

    @hookimpl
    async def apply_consent(self, source: Source, events: list[Event]) -> None:
        self.calls.append(("apply_consent", (event_names(events), await self._stream_length())))

    @hookimpl
    async def observe_outcomes(self, outcomes: list[Outcome]) -> None:
        statuses = [(outcome.stage, outcome.status) for outcome in outcomes]
        self.calls.append(("observe_outcomes", (statuses, await self._stream_length())))


class CollectingObserver:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    @hookimpl
    async def observe_outcomes(self, outcomes: list[Outcome]) -> None:
        self.outcomes.extend(outcomes)


class SettlingObserver(CollectingObserver):
    """Collects outcomes and sets ``settled`` once ``done(outcomes)`` holds."""

    def __init__(self, done: Callable[[list[Outcome]], bool]) -> None:
        super().__init__()
        self.done = done
        self.settled = asyncio.Event()

    @hookimpl
    async def observe_outcomes(self, outcomes: list[Outcome]) -> None:
        self.outcomes.extend(outcomes)
        if self.done(self.outcomes):
            self.settled.set()


class BrokenObserver:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def observe_outcomes(self, outcomes: list[Outcome]) -> None:
        self.calls += 1
        raise RuntimeError("this observer is broken on purpose")


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def buffered_events(redis: aioredis.Redis, settings: Settings) -> list[Event]:
    """Every event in the stream, in order, decoded as a consumer would."""
    return await read_events(redis, settings.key_prefix)


async def post_track(
    settings: Settings, pm: pluggy.PluginManager, message: dict[str, Any]
) -> tuple[int, Any]:
    async with collector_client(settings, pm=pm) as client:
        response = await client.post("/v1/track", json=message, headers=AUTH_HEADERS)
    return response.status_code, response.json()


# --- the collector calls the stages in the documented order -----------------------------------


async def test_collector_stages_run_in_documented_order(
    settings: Settings, redis: aioredis.Redis
) -> None:
    recorder = StageRecorder()
    pm = plugin_manager(static_keys(), (recorder, "recorder"))
    message = track("Order Completed")

    status, body = await post_track(settings, pm, message)

    assert status == 200, body
    assert body["accepted"] == 1
    # Observers hear of each stage as it happens: normalisation, each stage that reported
    # something (the transform), and the buffer, after the append.
    assert recorder.calls[1:] == [
        ("authenticate", (WRITE_KEY,)),
        ("admit_events", (SOURCE.id, 1, "/v1/track")),
        ("observe_outcomes", ([("normalise", "accepted")], 0)),
        ("validate_events", (["Order Completed"], 0)),
        ("transform_events", ["Order Completed"]),
        ("observe_outcomes", ([("transform", "transformed")], 0)),
        # Every stage sees the previous stage's output: consent sees the transform's rename.
        ("apply_consent", (["Renamed Event"], 0)),
        ("observe_outcomes", ([("buffer", "buffered")], 1)),
    ]
    assert recorder.calls[0] == ("startup", "collector")

    assert await redis.xlen(stream_key(settings.key_prefix)) == 1
    [event] = await buffered_events(redis, settings)
    assert isinstance(event, Track)
    assert event.event == "Renamed Event"
    assert event.message_id == message["messageId"]
    assert event.project_id == SOURCE.id


class Renamer:
    @hookimpl(tryfirst=True)
    def transform_events(self, source: Source, events: list[Event]) -> StageResult:
        return StageResult(
            events=[msgspec.structs.replace(event, event="Checkout Finished") for event in events]
        )


class Suffixer:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    async def transform_events(self, source: Source, events: list[Event]) -> StageResult:
        self.seen.extend(event_names(events))
        return StageResult(
            events=[
                msgspec.structs.replace(event, event=f"{event.event} (edited)")
                for event in events
                if isinstance(event, Track)
            ]
        )


async def test_chained_implementations_each_get_the_previous_output(
    settings: Settings, redis: aioredis.Redis
) -> None:
    suffixer = Suffixer()
    pm = plugin_manager(static_keys(), (suffixer, "suffixer"), (Renamer(), "renamer"))
    assert [plugin.plugin_name for plugin in Hooks(pm).per_plugin("transform_events")] == [
        "renamer",
        "suffixer",
    ]

    status, body = await post_track(settings, pm, track("Order Completed"))

    assert status == 200, body
    assert suffixer.seen == ["Checkout Finished"]
    [event] = await buffered_events(redis, settings)
    assert isinstance(event, Track)
    assert event.event == "Checkout Finished (edited)"


class NamedTransforms:
    """Registers two named transforms; a source lists them, in the order it wants."""

    @hookimpl
    def register_transforms(self, register: Callable[[TransformType], None]) -> None:
        def add_suffix(source: Source, events: list[Event]) -> StageResult:
            return StageResult(
                events=[msgspec.structs.replace(e, event=f"{e.event} v2") for e in events]
            )

        async def shout(source: Source, events: list[Event]) -> StageResult:
            return StageResult(
                events=[msgspec.structs.replace(e, event=e.event.upper()) for e in events]
            )

        register(TransformType(name="add-suffix", build=lambda _settings: add_suffix))
        register(TransformType(name="shout", build=lambda _settings: shout))


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (["add-suffix", "shout"], "ORDER COMPLETED V2"),
        (["shout", "add-suffix"], "ORDER COMPLETED v2"),
    ],
)
async def test_named_transforms_run_in_the_order_the_source_lists(
    settings: Settings, redis: aioredis.Redis, order: list[str], expected: str
) -> None:
    suffixer = Suffixer()
    source = Source(id="web", name="Website", settings={"transforms": order})
    pm = plugin_manager(
        (StaticKeys({WRITE_KEY: source}), "static-keys"),
        (NamedTransforms(), "named"),
        (suffixer, "suffixer"),
    )

    status, body = await post_track(settings, pm, track("Order Completed"))

    assert status == 200, body
    # The transform_events hook runs after the source's named transforms.
    assert suffixer.seen == [expected]
    [event] = await buffered_events(redis, settings)
    assert isinstance(event, Track)
    assert event.event == f"{expected} (edited)"


async def test_source_naming_an_unknown_transform_gets_a_clear_500(
    settings: Settings, redis: aioredis.Redis
) -> None:
    source = Source(id="web", name="Website", settings={"transforms": ["shout", "nope"]})
    pm = plugin_manager((StaticKeys({WRITE_KEY: source}), "static-keys"), (NamedTransforms(), "n"))

    status, body = await post_track(settings, pm, track())

    assert status == 500
    assert body["code"] == "unknown_transform"
    assert "'nope'" in body["message"] and "add-suffix, shout" in body["message"]
    assert "SIGNALSMITH_TRANSFORMS" in body["message"]
    assert await buffered_events(redis, settings) == []


class ConsentByAnalytics:
    """Drops events whose sender declined the "analytics" category."""

    @hookimpl
    def apply_consent(self, source: Source, events: list[Event]) -> StageResult:
        kept: list[Event] = []
        dropped: list[Drop] = []
        for event in events:
            preferences = event.context.get("consent", {}).get("categoryPreferences", {})
            if preferences.get("analytics") is False:
                dropped.append(Drop(event=event, reason="no_consent", detail="analytics"))
            else:
                kept.append(event)
        return StageResult(events=kept, dropped=dropped)


def declining_analytics() -> dict[str, Any]:
    """A track message whose consent declines analytics (``ConsentByAnalytics`` drops it)."""
    return track(
        "Signed Up",
        context={
            "library": {"name": "signalsmith-tests", "version": "0"},
            "consent": {"categoryPreferences": {"analytics": False}},
        },
    )


async def test_stage_drops_are_reported_to_client_and_observers(
    settings: Settings, redis: aioredis.Redis
) -> None:
    observer = CollectingObserver()
    pm = plugin_manager(static_keys(), (ConsentByAnalytics(), "consent"), (observer, "observer"))
    allowed = track("Signed Up")
    declined = declining_analytics()

    async with collector_client(settings, pm=pm) as client:
        response = await client.post(
            "/v1/batch", json={"batch": [allowed, declined]}, headers=AUTH_HEADERS
        )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1
    assert body["dropped"] == [
        {
            "index": 1,
            "messageId": declined["messageId"],
            "stage": "consent",
            "reason": "no_consent",
            # The stage's detail reaches the client too (omitted when a stage gives none).
            "detail": "analytics",
        }
    ]
    assert [event.message_id for event in await buffered_events(redis, settings)] == [
        allowed["messageId"]
    ]
    assert [(o.stage, o.status, o.message_id, o.reason) for o in observer.outcomes] == [
        ("normalise", "accepted", allowed["messageId"], None),
        ("normalise", "accepted", declined["messageId"], None),
        ("consent", "dropped", declined["messageId"], "no_consent"),
        ("buffer", "buffered", allowed["messageId"], None),
    ]
    # Each outcome carries its event: an observer can show what was dropped.
    [dropped] = [o for o in observer.outcomes if o.status == "dropped"]
    assert dropped.event is not None and dropped.event.message_id == declined["messageId"]


class LeanObserver(CollectingObserver):
    """An observer that learns the routine path elsewhere (as the debugger does)."""

    @hookimpl
    def wants_routine_outcomes(self) -> bool:
        return False


class OldNameRenamer:
    @hookimpl
    def transform_events(self, events: list[Event]) -> StageResult:
        return StageResult(
            events=[
                msgspec.structs.replace(event, event="Account Created")
                if isinstance(event, Track) and event.event == "Signed Up Old"
                else event
                for event in events
            ]
        )


async def test_an_observer_that_declines_the_routine_path_gets_lean_lists(
    settings: Settings, redis: aioredis.Redis
) -> None:
    lean, full = LeanObserver(), CollectingObserver()
    pm = plugin_manager(
        static_keys(),
        (OldNameRenamer(), "old-names"),
        (ConsentByAnalytics(), "consent"),
        (lean, "lean"),
        (full, "full"),
    )
    allowed = track("Signed Up")
    renamed = track("Signed Up Old")
    declined = declining_analytics()
    async with collector_client(settings, pm=pm) as client:
        response = await client.post(
            "/v1/batch", json={"batch": [allowed, renamed, declined]}, headers=AUTH_HEADERS
        )
        assert response.json()["accepted"] == 2
        again = await client.post("/v1/track", json=allowed, headers=AUTH_HEADERS)
        assert again.json()["duplicates"] == 1

    def seen(outcomes: list[Outcome]) -> list[tuple[Any, ...]]:
        return [(o.stage, o.status, o.message_id, o.count) for o in outcomes]

    assert seen(lean.outcomes) == [
        ("normalise", "accepted", None, 3),
        # A dropped event never reaches the buffer: told with the event as received.
        ("normalise", "accepted", declined["messageId"], 1),
        ("consent", "dropped", declined["messageId"], 1),
        # An event a stage replaced: as it was received (the buffer holds the new one).
        ("normalise", "accepted", renamed["messageId"], 1),
        ("buffer", "buffered", None, 2),
        ("normalise", "accepted", None, 1),
        ("buffer", "duplicate", allowed["messageId"], 1),
    ]
    [before] = [o for o in lean.outcomes if o.message_id == renamed["messageId"]]
    assert before.event is not None and before.event.event == "Signed Up Old"  # type: ignore[union-attr]
    # An observer that did not decline hears every event at every stage, as before.
    assert seen(full.outcomes) == [
        ("normalise", "accepted", allowed["messageId"], 1),
        ("normalise", "accepted", renamed["messageId"], 1),
        ("normalise", "accepted", declined["messageId"], 1),
        ("consent", "dropped", declined["messageId"], 1),
        ("buffer", "buffered", allowed["messageId"], 1),
        ("buffer", "buffered", renamed["messageId"], 1),
        ("normalise", "accepted", allowed["messageId"], 1),
        ("buffer", "duplicate", allowed["messageId"], 1),
    ]


async def test_with_only_lean_observers_a_request_is_told_in_counts(
    settings: Settings, redis: aioredis.Redis
) -> None:
    lean = LeanObserver()
    pm = plugin_manager(static_keys(), (lean, "lean"))
    async with collector_client(settings, pm=pm) as client:
        response = await client.post("/v1/track", json=track("Signed Up"), headers=AUTH_HEADERS)
    assert response.status_code == 200
    assert [(o.stage, o.status, o.message_id, o.count) for o in lean.outcomes] == [
        ("normalise", "accepted", None, 1),
        ("buffer", "buffered", None, 1),
    ]


class RateLimited:
    @hookimpl
    def admit_events(self) -> Refusal:
        return Refusal(retry_after=3, message="slow down")


@pytest.mark.parametrize(
    ("plugins", "auth", "stage", "reason", "source_id"),
    [
        ((), {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()}, "authenticate",
         "invalid_write_key", None),
        ((), {}, "authenticate", "missing_write_key", None),
        ((RateLimited(),), AUTH_HEADERS, "admit", "rate_limited", SOURCE.id),
    ],
    ids=["401-unknown-key", "401-no-key", "429"],
)  # fmt: skip
async def test_observers_see_every_refused_message_with_its_raw_json(
    settings: Settings,
    redis: aioredis.Redis,
    plugins: tuple[object, ...],
    auth: dict[str, str],
    stage: str,
    reason: str,
    source_id: str | None,
) -> None:
    """A debugger can show a request refused before any event existed: one outcome per
    message, with the message as sent and why nothing of it was kept."""
    observer = CollectingObserver()
    pm = plugin_manager(static_keys(), (observer, "observer"), *plugins)
    messages = [track("Signed Up"), track("Order Completed")]

    async with collector_client(settings, pm=pm) as client:
        response = await client.post("/v1/batch", json={"batch": messages}, headers=auth)

    assert response.status_code in (401, 429)
    assert [(o.stage, o.status, o.reason, o.source_id) for o in observer.outcomes] == [
        (stage, "rejected", reason, source_id)
    ] * 2
    sent = [json.loads(o.payload or b"") for o in observer.outcomes]
    assert [m["messageId"] for m in sent] == [m["messageId"] for m in messages]
    assert await redis.xlen(stream_key(settings.key_prefix)) == 0


async def test_observers_see_a_message_rejected_at_normalisation_as_sent(
    settings: Settings,
) -> None:
    observer = CollectingObserver()
    good, bad = track(), {"type": "track", "messageId": "m-bad", "userId": "u"}  # no event
    async with collector_client(settings, static_keys(), (observer, "observer")) as client:
        response = await client.post("/v1/batch", json={"batch": [good, bad]}, headers=AUTH_HEADERS)
    assert response.status_code == 200
    [rejected] = [o for o in observer.outcomes if o.status == "rejected"]
    assert (rejected.stage, rejected.reason, rejected.message_id) == (
        "normalise",
        "missing_event",
        "m-bad",
    )
    assert json.loads(rejected.payload or b"") == bad


# --- fan-out: one broken plugin does not break the others ------------------------------------


async def test_failing_observer_does_not_stop_the_others(
    settings: Settings, redis: aioredis.Redis
) -> None:
    broken = BrokenObserver()
    working = CollectingObserver()
    pm = plugin_manager(static_keys(), (working, "working-observer"), (broken, "broken-observer"))
    # The broken observer is called first, so the working one proves the isolation.
    assert [plugin.plugin_name for plugin in Hooks(pm).per_plugin("observe_outcomes")] == [
        "broken-observer",
        "working-observer",
    ]
    message = track()

    # A handler on the pipeline's own logger: the Litestar app reconfigures the root logger
    # when it starts, which detaches pytest's caplog handler.
    failures = RecordingHandler()
    pipeline_log = logging.getLogger("signalsmith.hooks")
    pipeline_log.addHandler(failures)
    try:
        status, body = await post_track(settings, pm, message)
    finally:
        pipeline_log.removeHandler(failures)

    assert status == 200, body
    assert body["accepted"] == 1
    # Told after normalisation and after the append, and broken both times.
    assert broken.calls == 2
    assert [(o.stage, o.status, o.message_id) for o in working.outcomes] == [
        ("normalise", "accepted", message["messageId"]),
        ("buffer", "buffered", message["messageId"]),
    ]
    assert await redis.xlen(stream_key(settings.key_prefix)) == 1
    assert [record.getMessage() for record in failures.records] == [
        "observer broken-observer failed"
    ] * 2


async def test_failing_sink_does_not_stop_another_sink(
    settings: Settings, redis: aioredis.Redis
) -> None:
    def refuse(events: list[Event]) -> None:
        raise RuntimeError("this destination is down on purpose")

    working = capture_sink_plugin("working-sink")
    broken = capture_sink_plugin("broken-sink", deliver=refuse, max_attempts=2)
    messages = [track(f"Event {number}") for number in range(3)]
    sent = {message["messageId"] for message in messages}
    observer = SettlingObserver(
        lambda outcomes: (
            {o.message_id for o in outcomes if o.status == "delivered"} == sent
            and any(o.status == "dead_lettered" for o in outcomes)
        )
    )
    pm = plugin_manager(
        static_keys(),
        (working.plugin, "working-destination"),
        (broken.plugin, "broken-destination"),
        (observer, "observer"),
    )
    async with collector_client(settings, pm=pm) as client:
        for message in messages:
            response = await client.post("/v1/track", json=message, headers=AUTH_HEADERS)
            assert response.status_code == 200, response.text
    observer.outcomes.clear()  # only the worker's outcomes from here on

    async with running_worker(settings, pm=pm, consumer="plugin-hooks-test"):
        # A safety net for a hang, not a timing assertion.
        await asyncio.wait_for(observer.settled.wait(), timeout=30)

    assert {e.message_id for batch in working.batches for e in batch} == sent
    assert broken.batches == []  # every call raised before recording
    dead_letters = dead_letter_key(settings.key_prefix, "broken-sink")
    assert await redis.xlen(dead_letters) >= 1
    assert {o.sink for o in observer.outcomes if o.status == "delivered"} == {"working-sink"}
    assert {o.sink for o in observer.outcomes if o.status in ("retried", "dead_lettered")} == {
        "broken-sink"
    }


# --- a gate plugin that raises fails the request ---------------------------------------------


class RaisingAuthenticator:
    @hookimpl(tryfirst=True)
    def authenticate(self, credentials: Credentials) -> Source | None:
        raise RuntimeError("key store unreachable")


class RaisingAdmission:
    @hookimpl
    def admit_events(self, source: Source, count: int, path: str) -> None:
        raise RuntimeError("rate limiter unreachable")


class RaisingValidator:
    @hookimpl
    def validate_events(self, source: Source, events: list[Event]) -> None:
        raise RuntimeError("contract store unreachable")


class RaisingTransform:
    @hookimpl
    async def transform_events(self, source: Source, events: list[Event]) -> None:
        raise RuntimeError("transform is broken")


class RaisingConsent:
    @hookimpl
    def apply_consent(self, source: Source, events: list[Event]) -> None:
        raise RuntimeError("consent is broken")


@pytest.mark.parametrize(
    ("gate", "code", "names_plugin"),
    [
        (RaisingAuthenticator, "auth_failed", False),
        (RaisingAdmission, "admit_failed", False),
        (RaisingValidator, "validate_failed", True),
        (RaisingTransform, "transform_failed", True),
        (RaisingConsent, "consent_failed", True),
    ],
)
async def test_gate_plugin_that_raises_answers_500_and_buffers_nothing(
    settings: Settings,
    redis: aioredis.Redis,
    gate: type,
    code: str,
    names_plugin: bool,
) -> None:
    observer = CollectingObserver()
    pm = plugin_manager(static_keys(), (observer, "observer"), (gate(), "broken-gate"))

    status, body = await post_track(settings, pm, track())

    assert status == 500
    assert set(body) == {"code", "message"}
    assert body["code"] == code
    assert body["message"]
    if names_plugin:
        assert "broken-gate" in body["message"]
    assert await redis.xlen(stream_key(settings.key_prefix)) == 0
    # Not even the dedupe marker: the client's retry must not be taken for a duplicate.
    seen = [key async for key in redis.scan_iter(match=f"{seen_key_prefix(settings.key_prefix)}*")]
    assert seen == []
    # Observers are told of the refusal (and never of a buffered event).
    assert observer.outcomes, "a refused request is reported to observers"
    refused = observer.outcomes[-1]
    assert (refused.status, refused.reason) == ("rejected", code)
    assert all(o.status in ("accepted", "rejected") for o in observer.outcomes)


# --- capability names are unique across plugins ----------------------------------------------


class DestinationPlugin:
    """Registers one destination sink and accepts whatever it is given."""

    def __init__(self, sink_name: str) -> None:
        self.sink_name = sink_name

    @hookimpl
    def register_destinations(self, register: Callable[[Sink], None]) -> None:
        register(Sink(name=self.sink_name))

    @hookimpl
    def deliver_events(self, destination: Sink, events: list[Event]) -> None:
        return None


class WarehousePlugin:
    """Registers one warehouse sink and accepts whatever it is given."""

    def __init__(self, sink_name: str) -> None:
        self.sink_name = sink_name

    @hookimpl
    def register_warehouses(self, register: Callable[[Sink], None]) -> None:
        register(Sink(name=self.sink_name))

    @hookimpl
    def write_events(self, warehouse: Sink, events: list[Event]) -> None:
        return None


def test_duplicate_destination_name_is_a_startup_error_naming_both_plugins() -> None:
    pm = plugin_manager(
        (DestinationPlugin("shared"), "dest-alpha"), (DestinationPlugin("shared"), "dest-beta")
    )
    with pytest.raises(PluginConfigError) as raised:
        Hooks(pm).sinks()
    message = str(raised.value)
    assert "'shared'" in message
    assert "dest-alpha" in message
    assert "dest-beta" in message


def test_sink_name_shared_by_destination_and_warehouse_is_an_error() -> None:
    pm = plugin_manager(
        (DestinationPlugin("events"), "dest-plugin"),
        (WarehousePlugin("events"), "warehouse-plugin"),
    )
    with pytest.raises(PluginConfigError, match="dest-plugin") as raised:
        Hooks(pm).sinks()
    assert "warehouse-plugin" in str(raised.value)


def test_registered_sinks_are_stamped_with_kind_and_plugin() -> None:
    pm = plugin_manager(
        (DestinationPlugin("webhook"), "dest-plugin"),
        (WarehousePlugin("clickhouse"), "warehouse-plugin"),
    )
    sinks = {sink.name: (sink.kind, sink.plugin) for sink in Hooks(pm).sinks()}
    assert sinks == {
        "webhook": ("destination", "dest-plugin"),
        "clickhouse": ("warehouse", "warehouse-plugin"),
    }


class LowercaseTransform:
    @hookimpl
    def register_transforms(self, register: Callable[[TransformType], None]) -> None:
        register(TransformType(name="lowercase", build=lambda _settings: lambda s, e: None))


def test_duplicate_transform_name_is_an_error_naming_both_plugins() -> None:
    pm = plugin_manager(
        (LowercaseTransform(), "transforms-one"), (LowercaseTransform(), "transforms-two")
    )
    with pytest.raises(PluginConfigError) as raised:
        Hooks(pm).transform_types()
    assert "transforms-one" in str(raised.value)
    assert "transforms-two" in str(raised.value)


# --- plugin selection and listing ------------------------------------------------------------


class ObserverWithStartup:
    @hookimpl
    def startup(self, runtime: Runtime) -> None:
        return None

    @hookimpl
    def observe_outcomes(self, outcomes: list[Outcome]) -> None:
        return None


def installed_entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group="signalsmith")}


def test_blocklist_skips_a_plugin_and_infos_list_the_rest() -> None:
    pm = build_plugin_manager(
        load_entry_points=False,
        block=["x"],
        extra_plugins=[(ObserverWithStartup(), "x"), (ObserverWithStartup(), "y")],
    )
    assert pm.get_plugin("x") is None
    assert pm.is_blocked("x")
    assert plugin_infos(pm) == [
        PluginInfo(name="y", version=None, hooks=["observe_outcomes", "startup"])
    ]


def test_allowlist_and_blocklist_apply_to_entry_points() -> None:
    names = set(installed_entry_points())
    only_extras = build_plugin_manager(allow=[], extra_plugins=[(ObserverWithStartup(), "y")])
    assert [info.name for info in plugin_infos(only_extras)] == ["y"]

    everything_blocked = build_plugin_manager(block=names)
    assert plugin_infos(everything_blocked) == []

    for name in names:
        allowed = build_plugin_manager(allow=[name])
        assert [info.name for info in plugin_infos(allowed)] == [name]
        assert plugin_infos(build_plugin_manager(allow=[name], block=[name])) == []


def test_plugin_modules_are_registered_by_import_path_and_can_be_blocked() -> None:
    module = "signalsmith.testing.env_keys"
    pm = plugin_manager_for(Settings(plugin_modules=(module,), plugins_allow=()))
    assert plugin_infos(pm) == [PluginInfo(name=module, version=None, hooks=["authenticate"])]

    blocked = plugin_manager_for(
        Settings(plugin_modules=(module,), plugins_allow=(), plugins_block=(module,))
    )
    assert plugin_infos(blocked) == []


async def test_plugins_endpoint_lists_registered_plugins_with_hooks(settings: Settings) -> None:
    pm = plugin_manager(static_keys(), (ObserverWithStartup(), "observer"))
    async with collector_client(settings, pm=pm) as client:
        response = await client.get("/api/v1/plugins")

    assert response.status_code == 200, response.text
    assert response.json() == [
        {"name": "observer", "version": None, "hooks": ["observe_outcomes", "startup"]},
        {"name": "static-keys", "version": None, "hooks": ["authenticate"]},
    ]


def test_plugins_cli_lists_installed_plugins_as_json(settings: Settings) -> None:
    module = "signalsmith.testing.env_keys"
    settings = msgspec.structs.replace(settings, plugin_modules=(module,))

    result = CliRunner().invoke(
        build_cli(settings), ["plugins", "--json"], obj={"settings": settings}
    )

    assert result.exit_code == 0, result.output
    listed = {plugin["name"]: plugin for plugin in json.loads(result.stdout)}
    assert listed[module] == {"name": module, "version": None, "hooks": ["authenticate"]}
    for name, entry_point in installed_entry_points().items():
        assert name in listed, f"installed entry point {name!r} is not listed"
        assert entry_point.dist is not None
        assert listed[name]["version"] == entry_point.dist.version
    if "auth-writekey" in installed_entry_points():
        assert "authenticate" in listed["auth-writekey"]["hooks"]
