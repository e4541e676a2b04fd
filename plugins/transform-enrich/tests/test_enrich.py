"""The enrich transform: user agents, geolocation from a MaxMind DB built here, and lookups from
a real local HTTP service that answers, is slow, fails or is down; the cache, the circuit
breaker and the address guard."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from signalsmith.testing import identify, track
from signalsmith.testing.transforms import build_chains, run_chain, workspace_errors
from signalsmith.workspace import BuildFailed
from signalsmith_transform_enrich import CircuitBreaker, plugin

PLUGIN = (plugin, "transform-enrich")
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def document(settings: str) -> str:
    return f"""\
version: 1
sources:
  web: {{transforms: [e]}}
transforms:
  e:
    type: enrich
    settings:
{settings}
"""


def chain(settings: str) -> list:
    return list(build_chains(document(settings), PLUGIN)["web"])


# --- user agents ---------------------------------------------------------------------------------


async def test_user_agents_fill_browser_os_and_device_without_overwriting() -> None:
    [e] = chain("      user_agent: {}\n")
    desktop = track(context={"userAgent": CHROME})
    phone = track(context={"userAgent": IPHONE, "os": {"name": "iOS", "version": "17.1.2"}})
    bot = track(context={"userAgent": GOOGLEBOT})
    wrong = track(context={"userAgent": 42})
    none = track()
    result = await run_chain([e], [desktop, phone, bot, wrong, none])
    contexts = [event.context for event in result.events]
    assert contexts[0]["browser"] == {"name": "Chrome", "version": "120.0.0"}
    assert contexts[0]["os"] == {"name": "Mac OS X", "version": "10.15.7"}
    assert contexts[0]["device"] == {"manufacturer": "Apple", "model": "Mac"}
    # The SDK's own os stays; what it lacked is added.
    assert contexts[1]["os"] == {"name": "iOS", "version": "17.1.2"}
    assert contexts[1]["device"] == {"manufacturer": "Apple", "model": "iPhone"}
    assert contexts[2]["device"] == {"type": "bot"}
    assert contexts[3] == {"userAgent": 42}
    statuses = {(o.message_id, o.status): o.detail for o in result.outcomes}
    assert statuses[(wrong["messageId"], "skipped")] == (
        "user agent not parsed: context.userAgent is a number"
    )
    assert (none["messageId"], "skipped") not in statuses  # nothing to parse is not an error
    assert "context.browser.name" in statuses[(desktop["messageId"], "transformed")]


# --- geo -----------------------------------------------------------------------------------------


@pytest.fixture
def geo_database(tmp_path: Path) -> str:
    """A small MaxMind DB in GeoLite2-City layout, written with mmdb-writer."""
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {
            "city": {"names": {"en": "London", "de": "London"}},
            "country": {
                "iso_code": "GB",
                "names": {"en": "United Kingdom", "de": "Vereinigtes Königreich"},
            },
            "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
            "location": {"latitude": 51.5142, "longitude": -0.0931, "time_zone": "Europe/London"},
        },
    )
    writer.insert_network(
        IPSet(["2001:db8::/32"]),
        {
            "city": {"names": {"en": "Zürich"}},
            "country": {"iso_code": "CH", "names": {"en": "Switzerland"}},
        },
    )
    path = tmp_path / "city.mmdb"
    writer.to_db_file(str(path))
    return str(path)


async def test_ip_addresses_are_located_into_context_location(geo_database: str) -> None:
    [e] = chain(f"      geo: {{database: '{geo_database}'}}\n")
    london = track(context={"ip": "81.2.69.160"})
    zurich = identify(context={"ip": "2001:db8::1"})
    unknown = track(context={"ip": "8.8.8.8"})
    private = track(context={"ip": "10.1.2.3"})
    bad = track(context={"ip": "not-an-ip"})
    kept = track(context={"ip": "81.2.69.1", "location": {"city": "Camden"}})
    result = await run_chain([e], [london, zurich, unknown, private, bad, kept])
    locations = [event.context.get("location") for event in result.events]
    assert locations[0] == {
        "city": "London",
        "country": "United Kingdom",
        "countryCode": "GB",
        "region": "England",
        "latitude": 51.5142,
        "longitude": -0.0931,
        "timeZone": "Europe/London",
    }
    assert locations[1] == {"city": "Zürich", "country": "Switzerland", "countryCode": "CH"}
    assert locations[2] is None and locations[3] is None and locations[4] is None
    assert locations[5]["city"] == "Camden" and locations[5]["country"] == "United Kingdom"
    [skipped] = [o for o in result.outcomes if o.status == "skipped"]
    assert skipped.detail == "not located: context.ip 'not-an-ip' is not an IP address"


async def test_place_names_in_another_language(geo_database: str) -> None:
    [e] = chain(f"      geo: {{database: '{geo_database}', language: de, to: properties.geo}}\n")
    [event] = (await run_chain([e], [track(context={"ip": "81.2.69.160"})])).events
    assert event.properties["geo"]["country"] == "Vereinigtes Königreich"


def test_a_database_missing_where_the_instance_is_built_names_the_setting() -> None:
    text = document("      geo: {database: /nonexistent/city.mmdb}\n")
    assert workspace_errors(text, PLUGIN) == []  # the file is each collector host's
    with pytest.raises(BuildFailed) as failed:
        build_chains(text, PLUGIN)
    assert str(failed.value).startswith(
        "transforms.e.settings.geo.database: cannot open the MaxMind database "
        "'/nonexistent/city.mmdb'"
    )


# --- lookups against a real local service --------------------------------------------------------


class Service:
    """A local HTTP service: ``mode`` is ok (JSON by key), slow, fail (500) or 404."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.requests: list[tuple[str, dict[str, str]]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.requests.append((self.path, dict(self.headers.items())))
                if service.mode == "slow":
                    time.sleep(service.delay)
                if service.mode == "fail":
                    self._answer(500, b'{"error": "boom"}')
                elif self.path.endswith("/unknown") or service.mode == "404":
                    self._answer(404, b"{}")
                else:
                    key = self.path.rsplit("/", 1)[-1]
                    body = {"plan": f"plan-of-{key}", "tier": 2, "internal": "x"}
                    self._answer(200, json.dumps(body).encode())

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    running = Service()
    yield running
    running.close()


def lookup_chain(url: str, extra: str = "") -> Any:
    [e] = chain(
        f"""\
      lookup:
        url: "{url}/users/{{key}}"
        to: context.crm
        select: [plan, tier]
        timeout_seconds: 0.3
        allow_networks: ["127.0.0.0/8"]
        breaker: {{failures: 3, reset_seconds: 0.5}}
{extra}"""
    )
    return e


async def test_lookups_enrich_each_distinct_key_once_and_cache_it(service: Service) -> None:
    e = lookup_chain(service.url)
    messages = [
        track(userId="u 1"),
        track(userId="u 1"),
        track(userId="u2"),
        track(userId="unknown"),
    ]
    result = await run_chain([e], messages)
    crm = [event.context.get("crm") for event in result.events]
    assert crm == [
        {"plan": "plan-of-u%201", "tier": 2},
        {"plan": "plan-of-u%201", "tier": 2},
        {"plan": "plan-of-u2", "tier": 2},
        None,  # 404: no entry, nothing to add
    ]
    assert sorted(path for path, _ in service.requests) == [
        "/users/u%201",
        "/users/u2",
        "/users/unknown",
    ]
    assert service.requests[0][1]["Host"] == service.url.removeprefix("http://")
    # Answers, the 404 too, are reused for cache_seconds.
    await run_chain([e], [track(userId="u2"), track(userId="unknown")])
    assert len(service.requests) == 3


async def test_the_cache_expires(service: Service) -> None:
    e = lookup_chain(service.url, "        cache_seconds: 0.2\n")
    await run_chain([e], [track(userId="u1")])
    await asyncio.sleep(0.3)
    await run_chain([e], [track(userId="u1")])
    assert len(service.requests) == 2


async def test_a_slow_service_costs_the_timeout_and_events_pass_on(service: Service) -> None:
    service.mode, service.delay = "slow", 2.0
    e = lookup_chain(service.url)
    result = await run_chain([e], [track(userId="a"), track(userId="b")])
    assert [event.context.get("crm") for event in result.events] == [None, None]
    details = [o.detail for o in result.outcomes]
    assert details[0] == (
        "lookup of userId 'a' failed: no answer within 0.3s; passed on without it "
        "(on_failure: pass)"
    )


async def test_the_breaker_opens_after_failures_probes_and_closes(service: Service) -> None:
    service.mode = "fail"
    e = lookup_chain(service.url)
    result = await run_chain([e], [track(userId=f"user-{n}") for n in range(30)])
    assert len(result.events) == 30  # fail-open
    # Three failures open the breaker; the rest are not even requested (with concurrency 8,
    # lookups already in flight when it opened, and those started before, still count).
    assert 3 <= len(service.requests) <= 8 + 2
    assert "HTTP 500" in (result.outcomes[0].detail or "")
    assert "circuit is open" in (result.outcomes[-1].detail or "")
    breaker = e.apply.lookups.breaker
    assert breaker.state == "open"
    requests_when_open = len(service.requests)
    await run_chain([e], [track(userId="later")])
    assert len(service.requests) == requests_when_open  # open: costs nothing
    # After reset_seconds one probe goes through; the service answers again: closed.
    service.mode = "ok"
    await asyncio.sleep(0.6)
    result = await run_chain([e], [track(userId="p1"), track(userId="p2")])
    assert breaker.state == "closed"
    assert len(service.requests) == requests_when_open + 1  # the probe only
    assert [event.context.get("crm") for event in result.events] == [
        {"plan": "plan-of-p1", "tier": 2},
        None,  # refused while the probe was in flight
    ]
    result = await run_chain([e], [track(userId="p2")])
    assert result.events[0].context["crm"] == {"plan": "plan-of-p2", "tier": 2}


async def test_a_service_that_is_down_fails_fast_and_on_failure_drop_drops(
    service: Service,
) -> None:
    url = service.url
    service.close()  # nothing listens there any more
    e = lookup_chain(url, "        on_failure: drop\n")
    result = await run_chain([e], [track(userId="x"), track(userId=None, anonymousId="a")])
    assert [event.anonymous_id for event in result.events] == ["a"]  # no key: not looked up
    [(_, drop)] = result.dropped
    assert drop.reason == "e"
    assert drop.detail.startswith(
        "dropped by enrich 'e': lookup of userId 'x' failed: ConnectError"
    )


async def test_loopback_is_refused_unless_the_workspace_allows_it(service: Service) -> None:
    [e] = chain(f'      lookup: {{url: "{service.url}/users/{{key}}"}}\n')
    result = await run_chain([e], [track(userId="u1")])
    assert service.requests == []
    assert result.events[0].context.get("lookup") is None
    assert (
        "127.0.0.1 resolves to 127.0.0.1, a loopback address; lookups may reach it only when "
        "allow_networks lists its network" in (result.outcomes[0].detail or "")
    )
    [e] = chain(
        f'      lookup: {{url: "http://localhost:{service.url.rsplit(":", 1)[1]}/users/{{key}}"}}\n'
    )
    result = await run_chain([e], [track(userId="u1")])
    assert service.requests == []
    assert "a loopback address" in (result.outcomes[0].detail or "")


def test_the_breaker_on_its_own_clock() -> None:
    now = [0.0]
    breaker = CircuitBreaker("t", failures=2, reset_seconds=10, clock=lambda: now[0])
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and breaker.state == "half-open"
    assert not breaker.allow()  # one probe at a time
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            '      lookup: {url: "https://crm.example.com/users"}\n',
            "transforms.e.settings.lookup.url: the URL needs {key}",
        ),
        (
            '      lookup: {url: "ftp://x/{key}"}\n',
            "transforms.e.settings.lookup.url: expected `str` matching regex",
        ),
        (
            '      lookup: {url: "https://x/{key}", allow_networks: ["10.0.0.0/33"]}\n',
            "transforms.e.settings.lookup.allow_networks[0]: '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network",
        ),
        (
            '      lookup: {url: "https://x/{key}", headers: {Authorization: "Bearer abc"}}\n',
            "transforms.e.settings.lookup.headers.Authorization: a secret must be written",
        ),
        (
            "      user_agent: {from: context.agent.x.y, cache_size: -1}\n",
            "transforms.e.settings.user_agent.cache_size: expected `int` >= 0",
        ),
        (
            "      geo: {database: x.mmdb, to: messageId}\n",
            "transforms.e.settings.geo.to: 'messageId': messageId is set by SignalSmith",
        ),
        ("      {}\n", "transforms.e.settings: an enrich transform needs"),
    ],
)
def test_bad_settings_are_refused_with_their_path(settings: str, expected: str) -> None:
    [error] = workspace_errors(document(settings), PLUGIN)
    assert error.startswith(expected), error


async def test_concurrent_batches_ask_for_a_key_once(service: Service) -> None:
    service.mode, service.delay = "slow", 0.1  # answers, within the 0.3 s timeout
    e = lookup_chain(service.url)
    results = await asyncio.gather(*(run_chain([e], [track(userId="same")]) for _ in range(20)))
    assert len(service.requests) == 1
    assert all(r.events[0].context["crm"] == {"plan": "plan-of-same", "tier": 2} for r in results)
