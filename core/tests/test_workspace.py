"""The workspace document: reading, checking every error with its line, secrets, the JSON
Schema, numbered versions with compare-and-set, and processes following the current version.

Everything runs against the real Redis; collectors and workers here are the core's own app and
worker in this process (`tests/test_workspace_live.py` runs them as separate processes).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jsonschema
import msgspec
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from signalsmith import (
    DestinationType,
    Secret,
    Sink,
    Source,
    WorkspaceDocument,
    WorkspaceProblem,
    WorkspaceSection,
    hookimpl,
)
from signalsmith.cli import build_cli
from signalsmith.config import Settings
from signalsmith.hooks import Hooks, PluginConfigError
from signalsmith.records import Credentials
from signalsmith.testing import (
    Receiver,
    StaticKeys,
    collector_client,
    plugin_manager,
    running_worker,
    runtime_for,
    workspace_types,
)
from signalsmith.workspace import (
    DocumentText,
    Registry,
    StaleBase,
    UnknownSource,
    Workspace,
    WorkspaceInvalid,
    WorkspaceStore,
)
from signalsmith.workspace.active import build_active
from signalsmith.workspace.operations import apply, rollback
from signalsmith.workspace.placeholders import MissingVariable, resolve_placeholders
from signalsmith.workspace.schema import workspace_schema
from signalsmith.workspace.store import StoredVersion
from signalsmith.workspace.text import Unreadable, read_document
from signalsmith.workspace.validation import load_document

WEB_KEY = "wk-workspace-web"
OTHER_KEY = "wk-workspace-other"
KEYS = StaticKeys(
    {WEB_KEY: Source(id="web", name="web"), OTHER_KEY: Source(id="other", name="other")}
)
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WEB_KEY}:".encode()).decode()}
AUTH_OTHER = {"Authorization": "Basic " + base64.b64encode(f"{OTHER_KEY}:".encode()).decode()}


# --- a plugin owning a section and a source field --------------------------------------------


class Team(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    owner: str
    tiers: tuple[str, ...] = ("gold", "silver")


class Tier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    mode: Literal["strict", "lenient"] = "lenient"


def check_team(document: WorkspaceDocument) -> list[WorkspaceProblem]:
    tiers = document.sections["team"].tiers if "team" in document.sections else []
    return [
        WorkspaceProblem(
            ("sources", name, "tier", "name"),
            f"no tier {source.fields['tier'].name!r} in team.tiers",
        )
        for name, source in document.sources.items()
        if "tier" in source.fields and source.fields["tier"].name not in tiers
    ]


class TeamPlugin:
    built: list[int] = []

    @hookimpl
    def register_workspace_sections(self, register: Callable[[WorkspaceSection], None]) -> None:
        register(
            WorkspaceSection(
                name="team",
                settings=Team,
                source_field="tier",
                source_settings=Tier,
                check=check_team,
                build=lambda document: {"owner": document.sections["team"].owner.upper()},
            )
        )


def registry(*plugins: Any) -> Registry:
    return Registry.from_hooks(Hooks(plugin_manager(workspace_types, *plugins)))


def errors_of(text: str, *plugins: Any) -> list[str]:
    with pytest.raises(WorkspaceInvalid) as refused:
        load_document(DocumentText(text=textwrap.dedent(text)), registry(*plugins))
    return [str(error) for error in refused.value.errors]


GOOD = """\
version: 1
team: {owner: ana}
sources:
  web:
    description: the website
    transforms: [drop-checkout, tag]
    destinations: [hook]
    tier: {name: gold}
  other: {}
transforms:
  drop-checkout: {type: drop-event, settings: {event: Checkout}}
  tag: {type: tag, settings: {property: via}}
destinations:
  hook:
    type: http-post
    settings: {url: "https://example.com/in", token: "${HOOK_TOKEN}"}
    routing: {types: [track], events: ["Order *"]}
    batch_size: 50
"""


# --- reading -------------------------------------------------------------------------------------


def test_values_mean_what_yaml_1_2_says_and_keep_their_lines() -> None:
    read = read_document(
        DocumentText(text="a:\n  on: no\n  when: 2024-01-01\n  n: 0x10\nb: [1, 2.5, null, true]\n")
    )
    assert read.value == {
        "a": {"on": "no", "when": "2024-01-01", "n": 16},
        "b": [1, 2.5, None, True],
    }
    assert read.where(("a", "when")).line == 3
    assert read.where(("b", 1)).line == 5
    assert read.where(("a", "missing", "deeper")).line == 1  # its closest written parent


def test_anchors_and_merge_keys_work_and_custom_tags_are_refused() -> None:
    read = read_document(DocumentText(text="base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n"))
    assert read.value["c"] == {"x": 1, "y": 3}
    with pytest.raises(Unreadable, match=r"tag .*python/object.* is not supported"):
        read_document(DocumentText(text="a: !!python/object:os.system {}\n"))
    with pytest.raises(Unreadable, match="tag '!include' is not supported"):
        read_document(DocumentText(text="a: !include other.yaml\n"))


def test_json_is_read_too_tabs_included() -> None:
    read = read_document(DocumentText(text='{\n\t"version": 1,\n\t"sources": {}\n}', format="json"))
    assert read.value == {"version": 1, "sources": {}}
    assert read.where(("sources",)).line == 3


def test_includes_are_read_relative_kept_with_the_version_and_cycles_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "team.yaml").write_text("owner: ana\ntiers: [gold]\n")
    (tmp_path / "loop.yaml").write_text("x: {$include: loop.yaml}\n")
    text = "version: 1\nteam: {$include: plans/team.yaml}\n"
    document, read = load_document(
        DocumentText(text=text),
        registry(TeamPlugin()),
        read_file=lambda p: (tmp_path / p).read_text(),
    )
    assert document.sections["team"] == Team(owner="ana", tiers=("gold",))
    assert read.files == {"plans/team.yaml": "owner: ana\ntiers: [gold]\n"}
    # A stored version reads its includes from what was stored, not from disk.
    again = read_document(DocumentText(text=text, files=read.files))
    assert again.value["team"]["owner"] == "ana"
    with pytest.raises(Unreadable, match=r"\$include cycle: loop.yaml -> loop.yaml"):
        read_document(
            DocumentText(text="a: {$include: loop.yaml}\n"),
            read_file=lambda p: (tmp_path / p).read_text(),
        )
    with pytest.raises(Unreadable, match="inside it"):
        read_document(DocumentText(text="a: {$include: ../etc/passwd}\n"), read_file=lambda p: "")


# --- checking ------------------------------------------------------------------------------------


def test_a_good_document_is_typed_by_the_plugins_that_own_each_part() -> None:
    document, _ = load_document(DocumentText(text=GOOD), registry(TeamPlugin()))
    assert document.sources["web"].transforms == ("drop-checkout", "tag")
    assert document.sources["web"].fields == {"tier": Tier(name="gold")}
    assert document.transforms["tag"].settings == workspace_types.TagSettings(property="via")
    hook = document.destinations["hook"]
    assert hook.settings == workspace_types.HttpPostSettings(
        url="https://example.com/in", token="${HOOK_TOKEN}"
    )
    assert hook.routing.types == ("track",) and hook.batch_size == 50
    assert document.sections == {"team": Team(owner="ana")}


def test_every_error_is_reported_at_once_with_its_path_and_line() -> None:
    errors = errors_of(
        """\
        version: 1
        sources:
          web:
            transforms: [tagger, missing]
            destinations: [crm, nowhere]
            colour: blue
        transforms:
          tagger: {type: tag, settings: {value: 3}}
          old: {type: rename}
        destinations:
          crm:
            type: http-post
            settings:
              url: htp:/x
              token: plain-text-token
              retries: 3
        extras: {}
        """
    )
    assert errors == [
        "extras: no installed plugin defines a top-level section 'extras' (the core's: "
        "destinations, sources, transforms, version; plugins': none) (line 17)",
        "transforms.tagger.settings: missing required setting 'property' for transform type "
        "'tag' (line 8)",
        "transforms.tagger.settings.value: expected `str`, got 3 (line 8)",
        "transforms.old.type: no installed plugin registers a transform type 'rename' "
        "(installed: drop-event, tag) (line 9)",
        "destinations.crm.settings.retries: unknown setting 'retries' for destination type "
        "'http-post' (its settings: timeout_seconds, token, url) (line 16)",
        'destinations.crm.settings.url: expected an http(s) URL, got "htp:/x" (line 14)',
        "destinations.crm.settings.token: a secret must be written as a ${ENV_NAME} "
        "placeholder, not inline (inline it would be stored in Redis and shown by `config "
        "show`); set the variable in the environment of the processes that use it (line 15)",
        "sources.web.colour: no installed plugin defines a source field 'colour' (the core's: "
        "description, destinations, transforms; plugins': none) (line 6)",
        "sources.web.transforms[1]: transform 'missing' is not declared (declared: old, "
        "tagger); declare it under transforms: (line 4)",
        "sources.web.destinations[1]: destination 'nowhere' is not declared (declared: crm); "
        "declare it under destinations: (line 5)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the document is empty; it starts with `version: 1`"),
        ("- a\n", "expected a mapping at the top of the document, got a list (line 1)"),
        ("sources: {}\n", "missing `version: 1` (the format of the document) (line 1)"),
        ("version: 2\n", "version: this SignalSmith reads workspace format 1, got 2 (line 1)"),
        (
            "version: 1\nsources:\n  web: {}\n  web: {}\n",
            "sources.web: key 'web' is written twice in this mapping (first on line 3) (line 4)",
        ),
        ("version: 1\nsources: {web: {\n", "not valid YAML"),
        (
            "version: 1\nsources: {'a:b': {}}\n",
            "sources.a:b: expected a name of 1-64 letters, digits, '.', '_' or '-', got "
            '"a:b" (a source name) (line 2)',
        ),
        (
            "version: 1\nsources: {web: {transforms: [t, t]}}\ntransforms: {t: {type: tag, settings: {property: p}}}\n",
            "sources.web.transforms[1]: transform 't' is listed twice (line 2)",
        ),
        (
            "version: 1\nsources: {web: {transforms: [tag]}}\n",
            "declare an instance of type 'tag': `transforms: {tag: {type: tag}}`",
        ),
        (
            "version: 1\ndestinations: {d: {type: http-post, settings: {url: 'http://x'}, routing: {types: [click]}}}\n",
            "destinations.d.routing.types[0]: invalid enum value 'click'",
        ),
    ],
)
def test_each_kind_of_mistake_is_named(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert any(expected in error for error in errors), errors


def test_plugin_sections_and_source_fields_are_checked_by_their_plugin() -> None:
    errors = errors_of(
        """\
        version: 1
        team: {owner: 7}
        sources:
          web: {tier: {name: gold, mode: loose}}
        """,
        TeamPlugin(),
    )
    assert errors == [
        "sources.web.tier.mode: invalid enum value 'loose', got \"loose\" (line 4)",
        "team.owner: expected `str`, got 7 (line 2)",
    ]
    # Rules across parts are the plugin's `check`, run once the rest is valid.
    assert errors_of(
        "version: 1\nteam: {owner: ana}\nsources:\n  web: {tier: {name: bronze}}\n", TeamPlugin()
    ) == ["sources.web.tier.name: no tier 'bronze' in team.tiers (line 4)"]


def test_plugins_cannot_take_core_names_or_each_others() -> None:
    class Clash:
        @hookimpl
        def register_workspace_sections(self, register):  # type: ignore[no-untyped-def]
            register(WorkspaceSection(name="sources"))

    with pytest.raises(PluginConfigError, match="'sources', a name the core uses"):
        registry(Clash())

    class NoDelivery:
        @hookimpl
        def register_destination_types(self, register):  # type: ignore[no-untyped-def]
            register(DestinationType(name="silent"))

    with pytest.raises(PluginConfigError, match="implements no deliver_events hook"):
        registry(NoDelivery())


# --- secrets -------------------------------------------------------------------------------------


def test_placeholders_resolve_only_when_asked_and_a_missing_variable_names_itself() -> None:
    assert resolve_placeholders({"a": ["Bearer ${T}", "$${LITERAL}"]}, {"T": "s3cret"}) == {
        "a": ["Bearer s3cret", "${LITERAL}"]
    }
    with pytest.raises(MissingVariable, match="A, B are not set in this process"):
        resolve_placeholders("${A}${B}${A}", {})


class AnySecrets(msgspec.Struct, frozen=True):
    nested: dict[str, Secret] = {}


def test_a_secret_nested_in_settings_must_be_a_placeholder_too() -> None:
    class Plugin:
        @hookimpl
        def register_destination_types(self, register):  # type: ignore[no-untyped-def]
            register(DestinationType(name="nest", settings=AnySecrets))

        @hookimpl
        def deliver_events(self) -> None:
            return None

    errors = errors_of(
        "version: 1\ndestinations: {d: {type: nest, settings: {nested: {a: '${OK}', b: inline}}}}\n",
        Plugin(),
    )
    assert len(errors) == 1 and errors[0].startswith("destinations.d.settings.nested.b: a secret")


# --- the JSON Schema -------------------------------------------------------------------------------


def test_the_json_schema_accepts_a_good_document_and_refuses_bad_ones() -> None:
    schema = workspace_schema(registry(TeamPlugin()))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = read_document(DocumentText(text=GOOD)).value
    assert list(validator.iter_errors(good)) == []
    for bad in (
        {**good, "version": 2},
        {**good, "extras": {}},
        {**good, "transforms": {"t": {"type": "nope"}}},
        {**good, "transforms": {"t": {"type": "tag", "settings": {"property": 1}}}},
        {**good, "transforms": {"t": {"type": "tag"}}},  # a required setting missing
        {**good, "destinations": {"d": {"type": "http-post", "settings": {"url": "htp:/x"}}}},
        {
            **good,
            "destinations": {
                "d": {"type": "http-post", "settings": {"url": "https://a", "token": "inline"}}
            },
        },
        {**good, "sources": {"a:b": {}}},
        {**good, "sources": {"web": {"colour": "blue"}}},
    ):
        assert list(validator.iter_errors(bad)), bad


def test_config_schema_prints_it(settings: Settings) -> None:
    cli = build_cli(
        msgspec.structs.replace(
            settings, plugin_modules=("signalsmith.testing.workspace_types",), plugins_allow=()
        )
    )
    result = CliRunner().invoke(cli, ["config", "schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert [
        option["properties"]["type"]["const"]
        for option in schema["properties"]["transforms"]["additionalProperties"]["oneOf"]
    ] == ["drop-event", "tag"]


# --- versions ------------------------------------------------------------------------------------


async def test_versions_apply_with_compare_and_set_and_roll_back(
    redis: aioredis.Redis, settings: Settings
) -> None:
    key = lambda *parts: ":".join((settings.key_prefix, *parts))  # noqa: E731
    store = WorkspaceStore(redis, key)
    types = registry()
    first = DocumentText(text="version: 1\nsources: {web: {}}\n")
    second = DocumentText(text="version: 1\nsources: {web: {}, app: {}}\n")
    one = await apply(store, types, first, applied_by="test")
    assert (one.version, one.applied) == (1, True)
    assert [str(change) for change in one.changes] == ["+ sources.web"]
    # The same document again stores nothing.
    assert (await apply(store, types, first, applied_by="test")).applied is False
    # Two applies racing from version 1: one wins, the other is told it is stale.
    results = await asyncio.gather(
        apply(store, types, second, applied_by="a", base_version=1),
        apply(
            store,
            types,
            DocumentText(text="version: 1\nsources: {other: {}}\n"),
            applied_by="b",
            base_version=1,
        ),
        return_exceptions=True,
    )
    stale = [r for r in results if isinstance(r, StaleBase)]
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(stale) == 1 and len(won) == 1 and won[0].version == 2
    assert str(stale[0]).startswith(
        "this change is based on version 1, but the current version is 2"
    )
    # An invalid document stores nothing.
    with pytest.raises(WorkspaceInvalid):
        await apply(
            store,
            types,
            DocumentText(text="version: 1\nsources: {web: {transforms: [x]}}\n"),
            applied_by="c",
        )
    assert await store.current_version() == 2
    back = await rollback(store, types, 1, applied_by="test")
    assert back.version == 3
    current = await store.current()
    assert current is not None and current.text == first.text and current.rollback_of == 1
    assert [info.version for info in await store.history()] == [3, 2, 1]


# --- processes following the current version ------------------------------------------------------


async def test_a_collector_switches_transform_chains_and_refuses_unlisted_sources(
    settings: Settings, redis: aioredis.Redis
) -> None:
    pm = plugin_manager(KEYS, workspace_types)
    async with collector_client(settings, pm=pm) as client:
        runtime = client.app.state.runtime
        store, types = store_for(redis, settings), registry()
        # No workspace: every source, no transforms.
        answer = await client.post(
            "/v1/track", json={"userId": "u", "event": "Checkout"}, headers=AUTH
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["dropped"] == []
        await apply(
            store,
            types,
            DocumentText(
                text=GOOD.replace("    tier: {name: gold}\n", "").replace(
                    "team: {owner: ana}\n", ""
                )
            ),
            applied_by="test",
        )
        await wait_for_version(runtime, 1)
        answer = await client.post(
            "/v1/track", json={"userId": "u", "event": "Checkout"}, headers=AUTH
        )
        assert answer.json()["dropped"][0]["reason"] == "dropped_by_test"
        # A source the workspace does not list is refused, naming it and the fix.
        await apply(
            store, types, DocumentText(text="version: 1\nsources: {web: {}}\n"), applied_by="test"
        )
        await wait_for_version(runtime, 2)
        refused = await client.post(
            "/v1/track", json={"userId": "u", "event": "x"}, headers=AUTH_OTHER
        )
        assert refused.status_code == 403
        assert refused.json()["code"] == "unknown_source"
        assert (
            "source 'other' is not in the workspace (version 2, sources: web)"
            in refused.json()["message"]
        )
        settings_page = await client.get(f"/v1/projects/{OTHER_KEY}/settings")
        assert settings_page.status_code == 404
        kept = await client.post(
            "/v1/track", json={"userId": "u", "event": "Checkout"}, headers=AUTH
        )
        assert kept.json()["dropped"] == []
        ready = await client.get("/readyz")
        assert ready.json()["workspace_version"] == 2


async def wait_for_version(runtime: Any, version: int, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while runtime.workspace.active is None or runtime.workspace.active.version != version:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"version {version} not in use; status {runtime.workspace.status()}"
            )
        await asyncio.sleep(0.02)


def store_for(redis: aioredis.Redis, settings: Settings) -> WorkspaceStore:
    """The versions of the test's key prefix, on the test's own Redis client (the app under
    test runs its own event loop)."""
    return WorkspaceStore(redis, lambda *parts: ":".join((settings.key_prefix, *parts)))


async def test_attach_is_a_lookup_in_the_version_in_use(redis: aioredis.Redis) -> None:
    workspace = Workspace(redis, lambda *p: ":".join(p), registry(), collects=True, delivers=False)
    source = Source(id="web", name="web")
    assert workspace.attach(source) is source  # no workspace: the source as it is
    document, _ = load_document(DocumentText(text="version: 1\nsources: {web: {}}\n"), registry())
    stored = StoredVersion(
        version=4, applied_at=datetime.now(UTC), applied_by="t", base_version=3, digest="", text=""
    )
    workspace.active = build_active(stored, document, registry(), collects=True, delivers=False)
    attached = workspace.attach(source)
    assert attached.pipeline is not None and attached.pipeline.version == 4
    with pytest.raises(UnknownSource):
        workspace.attach(Source(id="app", name="app"))


async def test_a_worker_follows_destinations_routes_by_source_and_resolves_secrets_only_there(
    settings: Settings,
    redis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "tok-" + "9f8e7d6c5b4a"
    monkeypatch.setenv("HOOK_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    with Receiver() as receiver:
        document = lambda path: textwrap.dedent(f"""\
            version: 1
            sources:
              web: {{destinations: [hook]}}
              other: {{}}
            destinations:
              hook:
                type: http-post
                settings: {{url: "{receiver.url}{path}", token: "${{HOOK_TOKEN}}"}}
            """)  # noqa: E731
        pm = plugin_manager(KEYS, workspace_types)
        async with (
            collector_client(settings, pm=pm) as client,
            running_worker(settings, workspace_types) as worker,
        ):
            runtime = client.app.state.runtime
            store, types = store_for(redis, settings), registry()
            await apply(store, types, DocumentText(text=document("/one")), applied_by="test")
            await wait_for_version(worker.runtime, 1)
            await wait_for_version(runtime, 1)
            # The collector never resolved the destination's secret; the worker did.
            assert runtime.workspace.active.destinations[0].settings is None
            await client.post(
                "/v1/track", json={"userId": "u", "event": "From other"}, headers=AUTH_OTHER
            )
            await client.post("/v1/track", json={"userId": "u", "event": "From web"}, headers=AUTH)
            events = await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1)
            assert [e["event"] for e in events] == ["From web"]  # only sources listing it
            assert receiver.requests[0].headers["Authorization"] == f"Bearer {secret}"
            # A changed destination switches between batches: the next batch goes to /two.
            await apply(store, types, DocumentText(text=document("/two")), applied_by="test")
            await wait_for_version(worker.runtime, 2)
            await client.post("/v1/track", json={"userId": "u", "event": "Second"}, headers=AUTH)
            await asyncio.to_thread(
                receiver.wait_for, lambda e: any(x["event"] == "Second" for x in e)
            )
            assert [e["event"] for e in receiver.events("/two")] == ["Second"]
            # Removed: its consumer stops; later events are not delivered.
            await apply(
                store,
                types,
                DocumentText(text="version: 1\nsources: {web: {}}\n"),
                applied_by="test",
            )
            await wait_for_version(worker.runtime, 3)
            await client.post(
                "/v1/track", json={"userId": "u", "event": "After removal"}, headers=AUTH
            )
            await asyncio.sleep(1.5)
            assert "After removal" not in [e["event"] for e in receiver.events()]
            assert worker.worker.workspace_consumers.running == {}
    assert secret not in caplog.text
    assert not await redis_holds(redis, settings.key_prefix, secret)


async def test_a_version_that_cannot_run_here_leaves_the_process_on_the_last_good_one(
    settings: Settings, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISSING_TOKEN", raising=False)
    async with running_worker(settings, workspace_types) as worker:
        runtime = worker.runtime
        store, types = runtime.workspace.store, runtime.workspace.registry
        await apply(
            store, types, DocumentText(text="version: 1\nsources: {web: {}}\n"), applied_by="t"
        )
        await wait_for_version(runtime, 1)
        await apply(
            store,
            types,
            DocumentText(
                text="version: 1\nsources: {web: {destinations: [d]}}\ndestinations: {d: {type: http-post, settings: {url: 'http://127.0.0.1:9', token: '${MISSING_TOKEN}'}}}\n"
            ),
            applied_by="t",
        )
        deadline = asyncio.get_running_loop().time() + 10
        while runtime.workspace.status().failed_version != 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        status = runtime.workspace.status()
        assert status.version == 1
        assert "destinations.d.settings: environment variable MISSING_TOKEN is not set" in (
            status.error or ""
        )
    # A process that must run the current version does not start without it.
    with pytest.raises(PluginConfigError, match="MISSING_TOKEN"):
        async with runtime_for(settings, workspace_types, role="worker"):
            pass


async def redis_holds(redis: aioredis.Redis, prefix: str, needle: str) -> bool:
    """Whether any value under ``prefix`` contains ``needle`` (every key type SignalSmith uses)."""
    async for key in redis.scan_iter(match=f"{prefix}:*"):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            values = [await redis.get(key)]
        elif kind == "hash":
            values = list((await redis.hgetall(key)).values())
        elif kind == "set":
            values = list(await redis.smembers(key))
        elif kind == "stream":
            values = [v for _, fields in await redis.xrange(key) for v in fields.values()]
        elif kind == "zset":
            values = [m for m in await redis.zrange(key, 0, -1)]
        else:
            values = await redis.lrange(key, 0, -1) if kind == "list" else []
        if any(needle.encode() in (v if isinstance(v, bytes) else str(v).encode()) for v in values):
            return True
    return False


def test_hooks_record_is_unchanged_for_plugins_that_ignore_workspaces() -> None:
    # Sinks registered by plugins keep taking every source (routing.sources is None).
    assert Sink(name="warehouse").routing.sources is None
    assert Credentials(write_keys=("k",)).write_keys == ("k",)


async def test_the_admin_api_applies_refuses_and_shows_versions(settings: Settings) -> None:
    admin = msgspec.structs.replace(settings, admin_token="ssadm_workspace")
    headers = {"Authorization": "Bearer ssadm_workspace"}
    async with collector_client(admin, pm=plugin_manager(workspace_types)) as client:
        assert (await client.get("/api/v1/admin/config")).status_code == 401
        assert (await client.get("/api/v1/admin/config", headers=headers)).status_code == 404
        invalid = await client.put(
            "/api/v1/admin/config",
            json={"document": "version: 1\nsources: {web: {transforms: [x]}}\n"},
            headers=headers,
        )
        assert invalid.status_code == 422
        assert invalid.json()["code"] == "invalid_workspace"
        assert invalid.json()["errors"][0]["path"] == "sources.web.transforms[0]"
        assert invalid.json()["errors"][0]["line"] == 2
        body = {"document": "version: 1\nsources: {web: {}}\n", "comment": "first"}
        applied = await client.put("/api/v1/admin/config", json=body, headers=headers)
        assert applied.json() == {
            "version": 1,
            "applied": True,
            "changes": [{"kind": "added", "path": "sources.web"}],
        }
        stale = await client.put(
            "/api/v1/admin/config",
            json={"document": "version: 1\nsources: {app: {}}\n", "base_version": 0},
            headers=headers,
        )
        assert stale.status_code == 409 and stale.json()["code"] == "stale_version"
        preview = await client.post(
            "/api/v1/admin/config/diff",
            json={"document": "version: 1\nsources: {app: {}}\n"},
            headers=headers,
        )
        assert [c["path"] for c in preview.json()["changes"]] == ["sources.web", "sources.app"]
        history = await client.get("/api/v1/admin/config/history", headers=headers)
        assert [(v["version"], v["comment"]) for v in history.json()] == [(1, "first")]
        shown = await client.get("/api/v1/admin/config", headers=headers)
        assert shown.json()["text"] == body["document"]
        schema = await client.get("/api/v1/admin/config/schema", headers=headers)
        assert schema.json()["title"] == "SignalSmith workspace"
