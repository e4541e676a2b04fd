"""`GET /v1/projects/{key}/settings` from a real `signalsmith serve` over real sockets.

analytics-next sends every event to the ``apiHost`` this answer names, and a CDN or cache in
front of the collector serves one answer to every browser: a client must not be able to choose
it. It comes from SIGNALSMITH_PUBLIC_URL, or from the forwarded headers of a configured proxy
(the test process's 127.0.0.1 plays it), else from the server's own address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import Collector

SPOOFED = {"Host": "evil.example.com", "X-Forwarded-Proto": "https"}
FORWARDED = {"X-Forwarded-Host": "collect.example.com", "X-Forwarded-Proto": "https"}


def segment_settings(collector: Collector, write_key: str, headers: dict[str, str]) -> dict:
    response = httpx.get(
        f"{collector.url}/v1/projects/{write_key}/settings", headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["integrations"]["Segment.io"]


@pytest.fixture
def start_with(
    start_collector: Callable[..., Collector], redis_url: str, key_prefix: str, write_key: str
) -> Callable[[dict[str, str]], Collector]:
    def start(env: dict[str, str]) -> Collector:
        return start_collector(
            redis_url=redis_url,
            key_prefix=key_prefix,
            write_keys={write_key: "src-browser"},
            extra_env=env,
        )

    return start


def test_without_configuration_the_server_names_itself(
    start_with: Callable[[dict[str, str]], Collector], write_key: str
) -> None:
    collector = start_with({})
    own = {"apiHost": f"127.0.0.1:{collector.port}/v1", "protocol": "http"}
    for headers in ({}, SPOOFED, FORWARDED, {**SPOOFED, **FORWARDED}):
        segment = segment_settings(collector, write_key, headers)
        assert {k: segment[k] for k in own} == own, headers


def test_a_trusted_proxy_forwarded_headers_are_believed(
    start_with: Callable[[dict[str, str]], Collector], write_key: str
) -> None:
    collector = start_with({"SIGNALSMITH_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"})
    segment = segment_settings(collector, write_key, FORWARDED)
    assert (segment["apiHost"], segment["protocol"]) == ("collect.example.com/v1", "https")
    # A proxy that appends to what its client sent: its own value, the last, counts.
    appended = {
        "X-Forwarded-Host": "evil.example.com, collect.example.com",
        "X-Forwarded-Proto": "http, https",
    }
    segment = segment_settings(collector, write_key, appended)
    assert (segment["apiHost"], segment["protocol"]) == ("collect.example.com/v1", "https")
    # The Host header still never counts, and a malformed forwarded host is ignored.
    segment = segment_settings(collector, write_key, {"X-Forwarded-Host": "a b/c", **SPOOFED})
    assert segment["apiHost"] == f"127.0.0.1:{collector.port}/v1"


def test_forwarded_headers_from_an_untrusted_address_are_ignored(
    start_with: Callable[[dict[str, str]], Collector], write_key: str
) -> None:
    collector = start_with({"SIGNALSMITH_TRUSTED_PROXIES": "10.0.0.0/8"})
    segment = segment_settings(collector, write_key, FORWARDED)
    assert (segment["apiHost"], segment["protocol"]) == (f"127.0.0.1:{collector.port}/v1", "http")


def test_the_public_url_wins(
    start_with: Callable[[dict[str, str]], Collector], write_key: str
) -> None:
    collector = start_with(
        {
            "SIGNALSMITH_PUBLIC_URL": "https://events.example.org",
            "SIGNALSMITH_TRUSTED_PROXIES": "127.0.0.1",
        }
    )
    for headers in ({}, SPOOFED, FORWARDED):
        segment = segment_settings(collector, write_key, headers)
        assert (segment["apiHost"], segment["protocol"]) == ("events.example.org/v1", "https")
