"""The facade over pluggy: wrappers, firstresult with awaited answers, tracing, attribution,
plugin state on the runtime, and transform types with checked settings.

Driven through the real collector app and a real Redis where a request is involved.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Generator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from signalsmith import (
    Credentials,
    Event,
    Runtime,
    Source,
    StageResult,
    Track,
    TransformType,
    hookimpl,
)
from signalsmith.boot import plugin_manager_for, start_runtime
from signalsmith.config import Settings, TransformDeclaration
from signalsmith.hooks import Hooks, PluginConfigError, PluginFailed
from signalsmith.testing import (
    StaticKeys,
    collector_client,
    plugin_manager,
    runtime_for,
    track,
)
from signalsmith.testing.stream import read_events

WRITE_KEY = "wk-hooks"
SOURCE = Source(id="src-hooks", name="Hooks test source")
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


def keys() -> tuple[object, str]:
    return StaticKeys({WRITE_KEY: SOURCE}), "keys"


class Exclaim:
    @hookimpl
    def transform_events(self, events: list[Event]) -> StageResult:
        return StageResult(
            events=[msgspec.structs.replace(e, event=f"{e.event}!") for e in events]  # type: ignore[union-attr]
        )


class WatchTransforms:
    """A new-style pluggy wrapper around transform_events: sees the batch before and after."""

    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[str] = []

    @hookimpl(wrapper=True)
    def transform_events(self, events: list[Event]) -> Generator[None, Any, Any]:
        self.before += [e.event for e in events]  # type: ignore[union-attr]
        result = yield
        answer = result[0] if isinstance(result, list) else result
        self.after += [e.event for e in answer.events]
        return result


async def test_a_wrapper_around_transform_events_sees_the_batch_before_and_after(
    settings: Settings, redis: aioredis.Redis
) -> None:
    watcher = WatchTransforms()
    async with collector_client(settings, keys(), (Exclaim(), "exclaim"), (watcher, "w")) as client:
        response = await client.post("/v1/track", json=track("Signed Up"), headers=AUTH)
    assert response.status_code == 200, response.text
    assert watcher.before == ["Signed Up"]
    assert watcher.after == ["Signed Up!"]
    [event] = await read_events(redis, settings.key_prefix)
    assert isinstance(event, Track) and event.event == "Signed Up!"


class Declines:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(tryfirst=True)
    async def authenticate(self, credentials: Credentials) -> Source | None:
        self.calls += 1
        return None


class NeverAsked:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(trylast=True)
    def authenticate(self, credentials: Credentials) -> Source | None:
        self.calls += 1
        return Source(id="wrong", name="must not be asked")


async def test_authenticate_takes_the_first_awaited_answer_and_asks_no_further(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """firstresult with async implementations: an awaited None passes to the next plugin, and
    once one answers, the later ones are not called at all."""
    declines, never = Declines(), NeverAsked()
    async with collector_client(
        settings, (declines, "declines"), keys(), (never, "never")
    ) as client:
        response = await client.post("/v1/track", json=track(), headers=AUTH)
    assert response.status_code == 200, response.text
    assert (declines.calls, never.calls) == (1, 0)
    [event] = await read_events(redis, settings.key_prefix)
    assert event.project_id == SOURCE.id


class Counts:
    """A stage with state: it attaches a counter at startup and finds it on the runtime."""

    @hookimpl
    def startup(self, runtime: Runtime) -> None:
        runtime.state["counts"] = {"events": 0}

    @hookimpl
    def validate_events(self, events: list[Event], runtime: Runtime) -> None:
        runtime.state["counts"]["events"] += len(events)


async def test_a_stage_keeps_its_state_on_the_runtime(settings: Settings) -> None:
    async with collector_client(settings, keys(), (Counts(), "counts")) as client:
        batch = {"batch": [track(), track(), track()]}
        assert (await client.post("/v1/batch", json=batch, headers=AUTH)).status_code == 200
        assert client.app.state.runtime.state["counts"] == {"events": 3}


async def test_trace_hooks_logs_every_call_through_pluggy(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signalsmith.hooks.trace")
    traced = msgspec.structs.replace(
        settings,
        trace_hooks=True,
        plugins_allow=(),
        plugin_modules=("signalsmith.testing.env_keys",),
    )
    hooks = Hooks(plugin_manager_for(traced))
    assert await hooks.authenticate(Credentials(write_keys=("unknown",)), runtime=None) is None
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.strip().startswith("authenticate [hook]") for line in lines), lines
    assert any("finish authenticate --> None" in line for line in lines), lines


class BrokenStartup:
    @hookimpl
    def startup(self) -> None:
        raise RuntimeError("cannot reach the CRM")


async def test_a_plugin_failing_at_startup_is_named(settings: Settings) -> None:
    with pytest.raises(PluginFailed, match="plugin 'crm' failed in startup") as raised:
        async with runtime_for(settings, (BrokenStartup(), "crm")):
            pass
    assert "cannot reach the CRM" in str(raised.value.__cause__)


# --- transform types and their configured instances -------------------------------------------


class Prefix(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: str
    times: int = 1


class PrefixTransforms:
    @hookimpl
    def register_transforms(self, register: Callable[[TransformType], None]) -> None:
        def build(settings: Prefix) -> Callable[[Source, list[Event]], StageResult]:
            def apply(source: Source, events: list[Event]) -> StageResult:
                prefix = settings.text * settings.times
                return StageResult(
                    events=[
                        msgspec.structs.replace(e, event=prefix + e.event)  # type: ignore[union-attr]
                        for e in events
                    ]
                )

            return apply

        register(TransformType(name="prefix", settings=Prefix, build=build))


def with_transforms(settings: Settings, **declared: dict[str, Any]) -> Settings:
    return msgspec.structs.replace(
        settings,
        transforms={
            name: msgspec.convert(declaration, TransformDeclaration)
            for name, declaration in declared.items()
        },
    )


async def test_configured_instances_run_in_the_order_a_source_lists_them(
    settings: Settings, redis: aioredis.Redis
) -> None:
    source = Source(id="web", name="Website", settings={"transforms": ["twice-a", "once-b"]})
    configured = with_transforms(
        settings,
        **{
            "twice-a": {"type": "prefix", "settings": {"text": "a", "times": 2}},
            "once-b": {"type": "prefix", "settings": {"text": "b"}},
        },
    )
    async with collector_client(
        configured, (StaticKeys({WRITE_KEY: source}), "keys"), (PrefixTransforms(), "prefixes")
    ) as client:
        response = await client.post("/v1/track", json=track("x"), headers=AUTH)
    assert response.status_code == 200, response.text
    [event] = await read_events(redis, settings.key_prefix)
    assert isinstance(event, Track) and event.event == "baax"


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (
            {"p": {"type": "prefix", "settings": {"text": 3}}},
            "transforms.p.settings: text: expected `str`, got `int`",
        ),
        (
            {"p": {"type": "prefix", "settings": {"text": "a", "colour": "red"}}},
            "transforms.p.settings: object contains unknown field `colour`",
        ),
        (
            {"q": {"type": "suffix"}},
            "transforms.q.type: no installed plugin registers a transform type 'suffix' "
            "(registered: prefix)",
        ),
        ({"r": {"type": "prefix"}}, "transforms.r.settings: object missing required field `text`"),
    ],
)
async def test_a_bad_transform_instance_stops_the_process_naming_the_setting(
    settings: Settings, declared: dict[str, Any], message: str
) -> None:
    pm = plugin_manager((PrefixTransforms(), "prefixes"))
    with pytest.raises(PluginConfigError) as raised:
        await start_runtime(with_transforms(settings, **declared), "collector", pm=pm)
    assert str(raised.value) == message
