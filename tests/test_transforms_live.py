"""All five transform types on one source, in the workspace's order, end to end: a real
`signalsmith serve` process, documents applied with `signalsmith config apply` in another
process, events sent with analytics-python, and what was buffered read back from Redis.

A transform type from a test plugin installed from a directory of its own (on PYTHONPATH, named
in SIGNALSMITH_PLUGIN_MODULES) runs first and last, so the chain's order is visible in every
event; the user function lives in the same directory. The lookup service is a real local HTTP
server, reachable only because the workspace allows loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis as sync_redis
import segment.analytics
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from signalsmith.testing.stream import read_events_sync

if TYPE_CHECKING:
    from conftest import Collector

TRANSFORM_PLUGINS = (
    "transform-rename,transform-properties,transform-enrich,transform-filter,transform-function"
)
SALT = "salt-" + uuid.uuid4().hex[:8]
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

STAMP_PLUGIN = '''
"""A test plugin from a directory of its own: the `stamp` transform appends its instance's
name to properties.chain, so the order transforms ran in is visible in each event."""
import msgspec
from signalsmith import StageResult, TransformType, hookimpl

class StampSettings(msgspec.Struct, frozen=True):
    pass

def build(settings, name):
    def apply(source, events):
        return StageResult(events=[
            msgspec.structs.replace(e, properties={**e.properties, "chain": [*e.properties.get("chain", []), name]})
            if hasattr(e, "properties") else e
            for e in events
        ])
    return apply

@hookimpl
def register_transforms(register):
    register(TransformType(name="stamp", settings=StampSettings, build=build))
'''

FUNCTIONS = """
from signalsmith_transform_function import DropEvent

def transform_event(event, ctx):
    if event.get("event") == "Internal":
        raise DropEvent("internal traffic")
    if event["type"] == "track":
        event["properties"]["scored"] = ctx.settings["score"]
    return event
"""


class Crm:
    """The lookup service: ``{"plan": ...}`` for every user."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                crm.paths.append(self.path)
                body = json.dumps({"plan": "pro", "seats": 5}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def crm() -> Iterator[Crm]:
    service = Crm()
    yield service
    service.server.shutdown()
    service.server.server_close()


@pytest.fixture
def own_directory(tmp_path: Path) -> Path:
    """The test plugin, the user function and the MaxMind DB, in a directory of their own."""
    directory = tmp_path / "mine"
    directory.mkdir()
    (directory / "ss_stamp_plugin.py").write_text(STAMP_PLUGIN)
    (directory / "ss_user_functions.py").write_text(FUNCTIONS)
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {
            "city": {"names": {"en": "London"}},
            "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
        },
    )
    writer.to_db_file(str(directory / "city.mmdb"))
    return directory


def workspace(directory: Path, crm_url: str, order: list[str]) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        sources:
          src-system-test:
            transforms: [{", ".join(order)}]
        transforms:
          first: {{type: stamp}}
          last: {{type: stamp}}
          legacy-names:
            type: rename
            settings:
              events: [{{from: Checkout Done, to: Order Completed}}]
              fields: [{{from: properties.total, to: properties.revenue}}]
          enrich:
            type: enrich
            settings:
              user_agent: {{}}
              geo: {{database: "{directory / "city.mmdb"}"}}
              lookup:
                url: "{crm_url}/users/{{key}}"
                to: context.crm
                allow_networks: ["127.0.0.0/8"]
          bots:
            type: filter
            settings: {{drop: 'context.device.type = "bot"'}}
          pii:
            type: properties
            settings:
              add: {{properties.plan: "{{{{ context.crm.plan }}}}"}}
              remove: [context.ip]
              hash: {{fields: [traits.email], salt: "${{PII_SALT}}"}}
          score:
            type: function
            settings: {{function: "ss_user_functions:transform_event", settings: {{score: 7}}}}
        """
    )


def environment(directory: Path) -> dict[str, str]:
    """The test plugin and the function importable, the five transform plugins loaded."""
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")])),
        "SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.env_keys,ss_stamp_plugin",
        "SIGNALSMITH_LOAD_PLUGINS": f"signalsmith.testing.env_keys,{TRANSFORM_PLUGINS}",
        "PII_SALT": SALT,
    }


def config_apply(collector: Collector, env: dict[str, str], path: Path) -> None:
    applied = subprocess.run(
        [sys.executable, "-m", "signalsmith", "config", "apply", str(path)],
        env={**collector._env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr


def wait_for_version(collector: Collector, version: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if (
            httpx.get(f"{collector.url}/readyz", timeout=5).json().get("workspace_version")
            == version
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"version {version} not in use:\n{collector.log_tail()}")


def send(
    collector: Collector, write_key: str, calls: Callable[[segment.analytics.Client], None]
) -> None:
    errors: list[Exception] = []
    client = segment.analytics.Client(
        write_key,
        host=collector.url,
        sync_mode=False,
        max_retries=1,
        on_error=lambda error, batch: errors.append(error),
    )
    try:
        calls(client)
        client.flush()
    finally:
        client.shutdown()
    assert errors == [], f"{errors}\n{collector.log_tail()}"


@pytest.fixture
def transforming_collector(
    start_collector: Callable[..., Collector],
    redis_url: str,
    key_prefix: str,
    write_key: str,
    own_directory: Path,
) -> Collector:
    return start_collector(
        redis_url=redis_url,
        key_prefix=key_prefix,
        write_keys={write_key: "src-system-test"},
        extra_env=environment(own_directory),
    )


def test_five_transform_types_and_a_plugin_from_its_own_directory_run_in_the_workspace_order(
    transforming_collector: Collector,
    write_key: str,
    redis_url: str,
    key_prefix: str,
    own_directory: Path,
    crm: Crm,
    tmp_path: Path,
) -> None:
    collector = transforming_collector
    env = environment(own_directory)
    order = ["first", "legacy-names", "enrich", "bots", "pii", "score", "last"]
    document = tmp_path / "signalsmith.yaml"
    document.write_text(workspace(own_directory, crm.url, order))
    config_apply(collector, env, document)
    wait_for_version(collector, 1)
    ids = {name: str(uuid.uuid4()) for name in ("checkout", "bot", "internal", "identify")}
    context = {"userAgent": CHROME, "ip": "81.2.69.160"}

    def calls(client: segment.analytics.Client) -> None:
        client.track(
            user_id="u1",
            event="Checkout Done",
            properties={"total": 30},
            context=context,
            message_id=ids["checkout"],
        )
        client.track(
            user_id="u2",
            event="Checkout Done",
            context={"userAgent": GOOGLEBOT},
            message_id=ids["bot"],
        )
        client.track(user_id="u1", event="Internal", context=context, message_id=ids["internal"])
        client.identify(
            user_id="u1",
            traits={"email": "zoë@example.com"},
            context=context,
            message_id=ids["identify"],
        )

    send(collector, write_key, calls)
    client = sync_redis.Redis.from_url(redis_url)
    try:
        stored = {event.message_id: event for event in read_events_sync(client, key_prefix)}
    finally:
        client.close()
    assert set(stored) == {ids["checkout"], ids["identify"]}, collector.log_tail()
    checkout = stored[ids["checkout"]]
    assert checkout.event == "Order Completed"
    assert checkout.properties == {
        "chain": ["first", "last"],
        "revenue": 30,
        "plan": "pro",
        "scored": 7,
    }
    assert checkout.context["browser"]["name"] == "Chrome"
    assert checkout.context["location"]["city"] == "London"
    assert checkout.context["crm"] == {"plan": "pro", "seats": 5}
    assert "ip" not in checkout.context
    identified = stored[ids["identify"]]
    assert (
        identified.traits["email"]
        == hmac.new(SALT.encode(), "zoë@example.com".encode(), hashlib.sha256).hexdigest()
    )
    assert sorted(crm.paths) == ["/users/u1", "/users/u2"]  # u1 once: cached

    # The workspace order wins: the filter before the enrichment sees no device type yet, so
    # the bot is kept; the stamps swap places.
    document.write_text(
        workspace(
            own_directory,
            crm.url,
            ["last", "bots", "legacy-names", "enrich", "pii", "score", "first"],
        )
    )
    config_apply(collector, env, document)
    wait_for_version(collector, 2)
    second_bot = str(uuid.uuid4())
    send(
        collector,
        write_key,
        lambda c: c.track(
            user_id="u3",
            event="Checkout Done",
            context={"userAgent": GOOGLEBOT},
            message_id=second_bot,
        ),
    )
    client = sync_redis.Redis.from_url(redis_url)
    try:
        stored = {event.message_id: event for event in read_events_sync(client, key_prefix)}
    finally:
        client.close()
    bot = stored[second_bot]
    assert bot.context["device"] == {"type": "bot"}
    assert bot.properties["chain"] == ["last", "first"]


def test_a_bad_setting_is_refused_by_config_apply_with_its_path(
    transforming_collector: Collector, own_directory: Path, crm: Crm, tmp_path: Path
) -> None:
    collector = transforming_collector
    env = environment(own_directory)
    document = tmp_path / "bad.yaml"
    text = workspace(own_directory, crm.url, ["bots", "score"])
    text = text.replace(
        """settings: {drop: 'context.device.type = "bot"'}""",
        """settings: {drop: 'context.device.type = '}""",
    )
    text = text.replace("ss_user_functions:transform_event", "ss_no_such_module:f")
    document.write_text(text)
    refused = subprocess.run(
        [sys.executable, "-m", "signalsmith", "config", "apply", str(document)],
        env={**collector._env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "transforms.bots.settings.drop: the condition does not parse" in output
    assert (
        "transforms.score.settings.function: module 'ss_no_such_module' does not import" in output
    )
    assert "nothing was applied" in output
