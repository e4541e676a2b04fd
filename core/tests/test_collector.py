"""The collector app in-process (Litestar test client) against a real Redis.

Every ingestion path, every way of passing the write key, body encodings, size limits, per-message
rejections, normalisation as stored, dedupe, CORS, health and readiness, and a replay of requests
captured from the real Segment clients.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import brotli
import msgspec
import pytest
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.testing import AsyncTestClient

from signalsmith import hookimpl
from signalsmith.collector.body import (
    BodyIncomplete,
    BodyTimeout,
    BodyTooLarge,
    ReadDeadlines,
    read_body,
)
from signalsmith.config import Settings
from signalsmith.model import (
    EVENT_CLASSES,
    EVENT_TYPES,
    Group,
    Identify,
)
from signalsmith.records import Credentials, Source
from signalsmith.testing import (
    StaticKeys,
    alias,
    collector_app,
    group,
    identify,
    page,
    screen,
    track,
)
from signalsmith.testing.stream import events_by_message_id, read_entries, read_events

KEY = "wk_collector_test_7f3a9c"
SOURCE = Source(id="src-collector", name="collector tests")
FACTORIES: dict[str, Callable[..., dict[str, Any]]] = {
    "track": track,
    "identify": identify,
    "page": page,
    "screen": screen,
    "group": group,
    "alias": alias,
}
CLASSES = EVENT_CLASSES
# Requests captured from the real Segment clients (tests/fixtures/client-requests/README.md).
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "client-requests"
FIXTURE_KEY = "wk_fixture_0001"


class RecordingKeys(StaticKeys):
    """StaticKeys that remembers every request it was asked about (proves the pipeline ran)."""

    def __init__(self, keys: dict[str, Source]) -> None:
        super().__init__(keys)
        self.calls: list[Credentials] = []

    @hookimpl
    def authenticate(self, credentials: Credentials) -> Source | None:
        self.calls.append(credentials)
        return super().authenticate(credentials)


@pytest.fixture
def keys() -> RecordingKeys:
    return RecordingKeys({KEY: SOURCE})


@pytest.fixture
def app_for(keys: RecordingKeys) -> Callable[[Settings], Litestar]:
    def build(settings: Settings) -> Litestar:
        return collector_app(settings, (keys, "keys"))

    return build


@pytest.fixture
async def client(
    settings: Settings, app_for: Callable[[Settings], Litestar]
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app_for(settings)) as test_client:
        yield test_client


Client = AsyncTestClient[Litestar]


def basic(key: str, *, colon: bool = True) -> str:
    raw = f"{key}:" if colon else key
    return "Basic " + base64.b64encode(raw.encode()).decode()


AUTH = {"Authorization": basic(KEY)}


async def post(
    client: Client,
    path: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(path, content=content, headers=AUTH if headers is None else headers)


def ok(response: Any, *, accepted: int | None = None) -> dict[str, Any]:
    """A success answer: exactly 200 with a JSON body saying what was buffered."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is True
    if accepted is not None:
        assert body["accepted"] == accepted, body
    return body


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    """An error answer: JSON with exactly ``code`` and ``message`` (what analytics-python reads)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


async def stored(redis: aioredis.Redis, settings: Settings) -> list[Any]:
    return await read_events(redis, settings.key_prefix)


def other_type(kind: str) -> str:
    return "screen" if kind != "screen" else "track"


# --- endpoints ------------------------------------------------------------------------------


SINGLE_PATHS = [(f"/v1/{kind}", kind, False) for kind in EVENT_TYPES] + [
    (f"/v1/{kind[0]}", kind, True) for kind in EVENT_TYPES
]


@pytest.mark.parametrize(("path", "kind", "browser"), SINGLE_PATHS)
async def test_single_event_endpoint_implies_the_type(
    client: Client, redis: aioredis.Redis, settings: Settings, path: str, kind: str, browser: bool
) -> None:
    message = FACTORIES[kind]()
    message["type"] = other_type(kind)  # the path wins over the body
    headers = {**AUTH, "Content-Type": "text/plain"} if browser else AUTH
    body = ok(await post(client, path, message, headers=headers), accepted=1)
    assert body == {"success": True, "accepted": 1, "duplicates": 0, "rejected": [], "dropped": []}
    (event,) = await stored(redis, settings)
    assert isinstance(event, CLASSES[kind])
    assert event.type == kind
    assert event.message_id == message["messageId"]
    assert event.project_id == SOURCE.id
    # Browser paths stamp the client's address, as Segment does for client-side events.
    assert ("ip" in event.context) is browser


async def test_single_event_endpoint_without_a_body_type(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    message = {k: v for k, v in group().items() if k != "type"}
    ok(await post(client, "/v1/group", message), accepted=1)
    (event,) = await stored(redis, settings)
    assert isinstance(event, Group)


async def test_events_endpoint_takes_one_message(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    message = identify()
    ok(await post(client, "/api/v1/events", message), accepted=1)
    (event,) = await stored(redis, settings)
    assert isinstance(event, Identify)
    assert event.message_id == message["messageId"]


@pytest.mark.parametrize("path", ["/api/v1/events", "/v1/batch", "/v1/import", "/v1/b"])
async def test_batch_endpoints(
    client: Client, redis: aioredis.Redis, settings: Settings, path: str
) -> None:
    messages = [FACTORIES[kind]() for kind in EVENT_TYPES]
    body = ok(await post(client, path, {"batch": messages}), accepted=6)
    assert body["rejected"] == [] and body["duplicates"] == 0
    events = await stored(redis, settings)
    assert [event.type for event in events] == list(EVENT_TYPES)
    assert [event.message_id for event in events] == [m["messageId"] for m in messages]


async def test_batch_endpoint_refuses_a_body_without_a_batch(client: Client) -> None:
    error(await post(client, "/v1/batch", track()), 400, "invalid_batch")


async def test_metrics_endpoint_is_accepted_without_auth(client: Client) -> None:
    series = {"series": [{"type": "Counter", "metric": "analytics_js.x", "value": 1, "tags": {}}]}
    response = await client.post(
        "/v1/m", content=json.dumps(series), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 200


async def test_ingest_paths_accept_only_post(client: Client) -> None:
    response = await client.get("/v1/track", headers=AUTH)
    error(response, 405, "method_not_allowed")


async def test_other_routes_answer_errors_as_json(client: Client) -> None:
    response = await client.put("/healthz")
    error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]
    error(await client.post("/api/v1/plugins"), 405, "method_not_allowed")
    error(await client.get("/v1/nowhere"), 404, "not_found")


async def test_browser_settings(client: Client, settings: Settings) -> None:
    response = await client.get(f"/v1/projects/{KEY}/settings")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    answer = response.json()
    segment = answer["integrations"]["Segment.io"]
    assert segment["apiKey"] == KEY
    # No public URL configured: this server's own address.
    assert segment["apiHost"] == f"127.0.0.1:{settings.port}/v1"
    assert segment["protocol"] == "http"
    # Only the Segment.io key: more would make analytics-next load legacy destinations.
    assert list(answer["integrations"]) == ["Segment.io"]
    assert answer["metrics"]["sampleRate"] == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example.com"},
        {"X-Forwarded-Proto": "https"},
        {"X-Forwarded-Host": "evil.example.com", "X-Forwarded-Proto": "https"},
        {"Forwarded": "host=evil.example.com;proto=https"},
    ],
    ids=["host", "forwarded-proto", "forwarded-host", "forwarded"],
)
async def test_browser_settings_ignore_what_the_client_says_about_the_host(
    client: Client, headers: dict[str, str]
) -> None:
    # A cache in front of the collector would serve a spoofed answer to every browser.
    plain = (await client.get(f"/v1/projects/{KEY}/settings")).json()
    spoofed = await client.get(f"/v1/projects/{KEY}/settings", headers=headers)
    assert spoofed.status_code == 200
    assert spoofed.json() == plain
    assert "evil" not in spoofed.text


@pytest.mark.parametrize(
    ("public_url", "api_host", "protocol"),
    [
        ("https://collect.example.com", "collect.example.com/v1", "https"),
        ("https://collect.example.com/", "collect.example.com/v1", "https"),
        ("http://collect.example.com:8080", "collect.example.com:8080/v1", "http"),
        ("https://example.com/events", "example.com/events/v1", "https"),
    ],
)
async def test_browser_settings_point_at_the_public_url(
    settings: Settings,
    app_for: Callable[[Settings], Litestar],
    public_url: str,
    api_host: str,
    protocol: str,
) -> None:
    configured = msgspec.structs.replace(settings, public_url=public_url)
    async with AsyncTestClient(app_for(configured)) as client:
        response = await client.get(
            f"/v1/projects/{KEY}/settings",
            headers={"Host": "evil.example.com", "X-Forwarded-Proto": "http"},
        )
    segment = response.json()["integrations"]["Segment.io"]
    assert (segment["apiHost"], segment["protocol"]) == (api_host, protocol)


async def test_browser_settings_of_an_unknown_key_is_404(client: Client) -> None:
    error(await client.get("/v1/projects/wk_nobody/settings"), 404, "invalid_write_key")


# --- authentication -------------------------------------------------------------------------


AUTH_FORMS = {
    "basic key:": ({"Authorization": basic(KEY)}, None),
    "basic bare key": ({"Authorization": basic(KEY, colon=False)}, None),
    "bearer": ({"Authorization": f"Bearer {KEY}"}, None),
    "body writeKey": ({}, KEY),
    "basic unknown, body known": ({"Authorization": basic("wk_other")}, KEY),
    "lowercase scheme": ({"Authorization": "basic " + basic(KEY).split()[1]}, None),
}


@pytest.mark.parametrize("form", list(AUTH_FORMS))
async def test_every_auth_form(
    client: Client, redis: aioredis.Redis, settings: Settings, form: str
) -> None:
    headers, body_key = AUTH_FORMS[form]
    message = track()
    single = {**message, "writeKey": body_key} if body_key else message
    ok(await post(client, "/v1/track", single, headers=headers), accepted=1)
    batch_message = track()
    batch: dict[str, Any] = {"batch": [batch_message]}
    if body_key:
        batch["writeKey"] = body_key
    ok(await post(client, "/v1/batch", batch, headers=headers), accepted=1)
    events = await stored(redis, settings)
    assert [e.message_id for e in events] == [message["messageId"], batch_message["messageId"]]
    assert {e.project_id for e in events} == {SOURCE.id}


@pytest.mark.parametrize(
    ("headers", "body_key"),
    [
        ({"Authorization": basic("wk_unknown")}, None),
        ({"Authorization": "Bearer wk_unknown"}, None),
        ({}, "wk_unknown"),
        ({"Authorization": basic("wk_unknown")}, "wk_unknown_too"),
    ],
)
async def test_unknown_key_is_401(
    client: Client,
    redis: aioredis.Redis,
    settings: Settings,
    headers: dict[str, str],
    body_key: str | None,
) -> None:
    message = {**track(), "writeKey": body_key} if body_key else track()
    error(await post(client, "/v1/track", message, headers=headers), 401, "invalid_write_key")
    assert await stored(redis, settings) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic"},
        {"Authorization": "Basic not-base64!"},
        {"Authorization": basic("")},
        {"Authorization": "Digest abc"},
    ],
)
async def test_no_key_is_401(
    client: Client, redis: aioredis.Redis, settings: Settings, headers: dict[str, str]
) -> None:
    error(await post(client, "/v1/track", track(), headers=headers), 401, "missing_write_key")
    assert await stored(redis, settings) == []


# --- body encodings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", None, "application/json", "application/json; utf-8"]
)
async def test_body_is_json_whatever_the_content_type(
    client: Client, redis: aioredis.Redis, settings: Settings, content_type: str | None
) -> None:
    message = track()
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post("/v1/t", content=json.dumps(message).encode(), headers=headers)
    if content_type is None:
        assert "content-type" not in response.request.headers
    ok(response, accepted=1)
    assert [e.message_id for e in await stored(redis, settings)] == [message["messageId"]]


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# Content-Encoding -> how a client encodes a body with it.
ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as RFC 9110 says
    "deflate (raw)": raw_deflate,  # as some clients send it
    "br": brotli.compress,
}


def encoding_header(name: str) -> str:
    return name.split()[0]


@pytest.mark.parametrize("name", list(ENCODINGS))
async def test_encoded_body(
    client: Client, redis: aioredis.Redis, settings: Settings, name: str
) -> None:
    messages = [track(), identify()]
    body = ENCODINGS[name](json.dumps({"batch": messages}).encode())
    headers = {**AUTH, "Content-Encoding": encoding_header(name).upper()}
    ok(await post(client, "/v1/batch", body, headers=headers), accepted=2)
    assert [e.message_id for e in await stored(redis, settings)] == [
        m["messageId"] for m in messages
    ]


@pytest.mark.parametrize("header", ["identity", "", " Identity ", "gzip, identity"])
async def test_identity_is_no_encoding(client: Client, header: str) -> None:
    plain = json.dumps(track()).encode()
    body = gzip.compress(plain) if "gzip" in header else plain
    headers = {**AUTH, "Content-Encoding": header}
    ok(await post(client, "/v1/track", body, headers=headers), accepted=1)


@pytest.mark.parametrize("header", ["zstd", "compress", "gzip, br", "br;q=1", "aes128gcm"])
async def test_an_unsupported_encoding_is_415(
    client: Client, redis: aioredis.Redis, settings: Settings, header: str
) -> None:
    body = gzip.compress(json.dumps(track()).encode())
    headers = {**AUTH, "Content-Encoding": header}
    response = await post(client, "/v1/track", body, headers=headers)
    answer = error(response, 415, "unsupported_encoding")
    assert "gzip, deflate, br" in answer["message"]
    # RFC 9110 15.5.16: a 415 for a content coding says which ones are accepted.
    assert response.headers["accept-encoding"] == "gzip, deflate, br"
    assert await stored(redis, settings) == []


async def test_a_gzip_body_of_several_members_is_read_whole(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    # `gzip -c head; gzip -c tail` (RFC 1952 2.2): the JSON is split across the members.
    messages = [track(), page(), identify()]
    plain = json.dumps({"batch": messages}).encode()
    body = b"".join(gzip.compress(part) for part in split(plain, len(plain) // 3 + 1))
    headers = {**AUTH, "Content-Encoding": "gzip"}
    ok(await post(client, "/v1/batch", body, headers=headers), accepted=3)
    # NUL bytes after the last member are padding, as gzip(1) reads them.
    padded_body = gzip.compress(json.dumps(track()).encode()) + bytes(9)
    ok(await post(client, "/v1/track", padded_body, headers=headers), accepted=1)
    assert len(await stored(redis, settings)) == 4


def receive_chunks(chunks: list[bytes]) -> Callable[[], Any]:
    """An ASGI ``receive`` that hands over a body in pieces, as a chunked upload arrives."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def split(body: bytes, size: int) -> list[bytes]:
    return [body[start : start + size] for start in range(0, len(body), size)] or [b""]


@pytest.mark.parametrize("name", list(ENCODINGS))
async def test_read_body_of_a_chunked_upload(name: str) -> None:
    """Classic Android streams gzip without a Content-Length: the body arrives in pieces."""
    plain = json.dumps({"batch": [screen(), track()]}).encode()
    once = ENCODINGS[name](plain)
    # For gzip, two members end to end: one body.
    encoded, expected = (once * 2, plain * 2) if "gzip" in name else (once, plain)
    encoding = "gzip" if "gzip" in name else encoding_header(name)
    for size in (64, 1):
        body = await read_body(
            receive_chunks(split(encoded, size)), limit=500 * 1024, encoding=encoding
        )
        assert body == expected
    body = await read_body(receive_chunks(split(plain, 7)), limit=len(plain))
    assert body == plain
    with pytest.raises(BodyTooLarge):
        await read_body(receive_chunks(split(plain, 7)), limit=len(plain) - 1)


def bomb(name: str, inflated: int) -> bytes:
    """``inflated`` zero bytes encoded, without ever holding them in memory at once."""
    block = bytes(1 << 20)
    if name == "br":
        brotli_compressor = brotli.Compressor()
        parts = [brotli_compressor.process(block) for _ in range(inflated // len(block))]
        return b"".join(parts) + brotli_compressor.finish()
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(name, -zlib.MAX_WBITS)
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    parts = [compressor.compress(block) for _ in range(inflated // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


def gzip_bomb(inflated: int) -> bytes:
    return bomb("gzip", inflated)


@pytest.mark.parametrize("name", ["gzip", "deflate", "deflate (raw)", "br"])
async def test_read_body_stops_inflating_at_the_limit(name: str) -> None:
    limit = 500 * 1024
    encoded = bomb(name, 20 * (1 << 20))
    if name == "gzip":  # a second member must not get past the limit either
        encoded = gzip.compress(bytes(limit - 10)) + encoded
    for size in (len(encoded), 1024, 7):
        receive = receive_chunks(split(encoded, size))
        tracemalloc.start()
        try:
            with pytest.raises(BodyTooLarge):
                await read_body(receive, limit=limit, encoding=encoding_header(name))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * limit, f"peak {peak} bytes inflating a bomb sent in {size}-byte chunks"


_TRACK = json.dumps(track()).encode()
INVALID_ENCODED: dict[str, tuple[str, bytes]] = {
    "gzip-garbage": ("gzip", b"this is not gzip"),
    "gzip-plain-json": ("gzip", _TRACK),
    "gzip-truncated": ("gzip", gzip.compress(_TRACK)[:-12]),
    "gzip-trailing-garbage": ("gzip", gzip.compress(_TRACK) + b"trailing garbage"),
    "gzip-data-after-padding": ("gzip", gzip.compress(_TRACK) + bytes(4) + b"\x1f"),
    "gzip-empty": ("gzip", b""),
    "deflate-garbage": ("deflate", b"this is not deflate"),
    "deflate-truncated": ("deflate", zlib.compress(_TRACK)[:-6]),
    "deflate-trailing-garbage": ("deflate", zlib.compress(_TRACK) + b"trailing garbage"),
    "deflate-empty": ("deflate", b""),
    "br-garbage": ("br", b"this is not brotli"),
    "br-truncated": ("br", brotli.compress(_TRACK)[:-3]),
    "br-trailing-garbage": ("br", brotli.compress(_TRACK) + b"trailing garbage"),
    "br-empty": ("br", b""),
}


@pytest.mark.parametrize(
    ("encoding", "body"), list(INVALID_ENCODED.values()), ids=list(INVALID_ENCODED)
)
async def test_a_body_that_is_not_its_encoding_is_400(
    client: Client, redis: aioredis.Redis, settings: Settings, encoding: str, body: bytes
) -> None:
    headers = {**AUTH, "Content-Encoding": encoding}
    response = await post(client, "/v1/track", body, headers=headers)
    answer = error(response, 400, f"invalid_{encoding}")
    assert encoding in answer["message"]
    assert await stored(redis, settings) == []


async def test_a_read_past_its_deadline_is_cut_off() -> None:
    deadlines = ReadDeadlines(0.05)
    never = asyncio.Event()
    try:
        assert await deadlines.within(asyncio.sleep(0, "quick")) == "quick"
        with pytest.raises(BodyTimeout):
            await deadlines.within(never.wait())
        # The task is not left cancelling: it goes on awaiting as usual.
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        assert await deadlines.within(asyncio.sleep(0.01, "after")) == "after"
    finally:
        deadlines.close()


async def test_a_read_cancelled_from_outside_stays_cancelled() -> None:
    deadlines = ReadDeadlines(10)
    reading = asyncio.create_task(deadlines.within(asyncio.Event().wait()))
    await asyncio.sleep(0.01)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    deadlines.close()


async def test_read_body_of_a_body_cut_short_is_incomplete() -> None:
    receive = receive_chunks([b'{"type": "tr'])

    async def then_disconnect() -> dict[str, Any]:
        message = await receive()
        return {**message, "more_body": True} if message["type"] == "http.request" else message

    with pytest.raises(BodyIncomplete):
        await read_body(then_disconnect, limit=1024)


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
async def test_a_utf8_byte_order_mark_is_skipped(
    client: Client, redis: aioredis.Redis, settings: Settings, path: str
) -> None:
    # What PowerShell's Out-File and Windows Notepad write before a JSON document.
    message = track()
    body = json.dumps(message if path == "/v1/track" else {"batch": [message]}).encode()
    ok(await post(client, path, b"\xef\xbb\xbf" + body), accepted=1)
    headers = {**AUTH, "Content-Encoding": "gzip"}
    ok(await post(client, path, gzip.compress(b"\xef\xbb\xbf" + body), headers=headers))
    assert [e.message_id for e in await stored(redis, settings)] == [message["messageId"]]


@pytest.mark.parametrize(
    "body", [b"{not json", b"", b'{"type": "track",', b"[]", b"null"], ids=repr
)
async def test_invalid_json_is_400(
    client: Client, redis: aioredis.Redis, settings: Settings, body: bytes
) -> None:
    error(await post(client, "/v1/track", body), 400, "invalid_json")
    error(await post(client, "/v1/batch", body), 400, "invalid_json")
    assert await stored(redis, settings) == []


# --- size limits ----------------------------------------------------------------------------


def padded(message: dict[str, Any], size: int) -> bytes:
    """``message`` as JSON of exactly ``size`` bytes (a ``pad`` property takes up the rest)."""
    base = json.dumps({**message, "pad": ""}).encode()
    body = json.dumps({**message, "pad": "x" * (size - len(base))}).encode()
    assert len(body) == size
    return body


async def test_single_message_limit_is_32kb(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    limit = settings.max_message_bytes
    assert limit == 32 * 1024
    at_limit = track()
    ok(await post(client, "/v1/track", padded(at_limit, limit)), accepted=1)
    over = track()
    error(await post(client, "/v1/track", padded(over, limit + 1)), 413, "message_too_large")
    assert [e.message_id for e in await stored(redis, settings)] == [at_limit["messageId"]]


async def test_request_over_500kb_is_413(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    assert settings.max_request_bytes == 500 * 1024
    messages = [track(properties={"blob": "x" * 30_000}) for _ in range(18)]
    body = json.dumps({"batch": messages}).encode()
    assert len(body) > 500 * 1024
    error(await post(client, "/v1/batch", body), 413, "request_too_large")
    # Also when every message would fit on its own and the request is gzipped small.
    headers = {**AUTH, "Content-Encoding": "gzip"}
    response = await post(client, "/v1/batch", gzip.compress(body), headers=headers)
    error(response, 413, "request_too_large")
    assert await stored(redis, settings) == []


async def test_request_just_under_500kb_is_accepted(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    # analytics-python flushes at 475,000 bytes; anything under the limit must pass.
    messages = [track(properties={"blob": "x" * 31_000}) for _ in range(16)]
    body = json.dumps({"batch": messages}).encode()
    assert 475_000 < len(body) <= settings.max_request_bytes
    ok(await post(client, "/v1/batch", body), accepted=16)
    assert len(await stored(redis, settings)) == 16


async def test_gzip_bomb_is_413_without_being_inflated(
    client: Client, redis: aioredis.Redis, settings: Settings, keys: RecordingKeys
) -> None:
    inflated = 50 * (1 << 20)
    bomb = gzip_bomb(inflated)
    assert len(bomb) < settings.max_request_bytes  # small on the wire, 50 MB inflated
    headers = {**AUTH, "Content-Encoding": "gzip"}
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        response = await post(client, "/v1/batch", bomb, headers=headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error(response, 413, "request_too_large")
    # Inflating it all would allocate 50 MB; the collector stops a little past 500 KB.
    assert peak < 8 * (1 << 20), f"peak allocation {peak} bytes while refusing a gzip bomb"
    # The pipeline (authentication onwards) never saw the request.
    assert keys.calls == []
    assert await stored(redis, settings) == []


async def test_oversized_item_in_a_batch_is_rejected_alone(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    small = [track(), identify(), page()]
    big = track(properties={"blob": "x" * (33 * 1024)})
    body = ok(await post(client, "/v1/batch", {"batch": [small[0], big, *small[1:]]}), accepted=3)
    (rejected,) = body["rejected"]
    assert rejected["index"] == 1
    # An oversized item is refused before it is decoded, so its messageId may be unknown.
    assert rejected["messageId"] in (None, big["messageId"])
    assert rejected["code"] == "message_too_large"
    assert rejected["message"]
    assert [e.message_id for e in await stored(redis, settings)] == [m["messageId"] for m in small]


def tiny_tracks(count: int) -> list[dict[str, Any]]:
    return [
        {"type": "track", "userId": "u", "event": "e", "messageId": f"m-{i}"} for i in range(count)
    ]


async def test_2501_messages_is_413(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    assert settings.max_batch_messages == 2500
    response = await post(client, "/v1/batch", {"batch": tiny_tracks(2501)})
    error(response, 413, "too_many_messages")
    assert await stored(redis, settings) == []


async def test_2500_messages_are_accepted(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    messages = tiny_tracks(2500)
    ok(await post(client, "/v1/batch", {"batch": messages}), accepted=2500)
    events = await stored(redis, settings)
    assert [e.message_id for e in events] == [m["messageId"] for m in messages]


# --- per-message rejections -----------------------------------------------------------------


def without(message: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in names}


INVALID_CASES: list[tuple[str, Any]] = [
    ("missing_user_id", track(userId=None, anonymousId=None)),
    ("missing_user_id", without(identify(), "userId")),
    ("missing_event", without(track(), "event")),
    ("missing_group_id", without(group(), "groupId")),
    ("missing_previous_id", without(alias(), "previousId")),
    ("invalid_type", track(type="purchase")),
    ("missing_type", without(track(), "type")),
    ("message_id_too_long", track(messageId="x" * 101)),
    ("invalid_timestamp", track(timestamp="2026-13-45T99:00:00Z")),
    ("invalid_field", track(properties=["not", "an", "object"])),
    ("not_an_object", "just a string"),
    ("not_an_object", [track()]),
]


@pytest.mark.parametrize(("code", "message"), INVALID_CASES, ids=lambda v: str(v)[:40])
async def test_each_invalid_message_has_its_own_code(
    client: Client, redis: aioredis.Redis, settings: Settings, code: str, message: Any
) -> None:
    good = track()
    body = ok(await post(client, "/v1/batch", {"batch": [good, message]}), accepted=1)
    (rejected,) = body["rejected"]
    assert set(rejected) == {"index", "messageId", "code", "message"}
    assert rejected["index"] == 1
    assert rejected["code"] == code
    assert rejected["message"]
    expected_id = message.get("messageId") if isinstance(message, dict) else None
    assert rejected["messageId"] == expected_id
    assert [e.message_id for e in await stored(redis, settings)] == [good["messageId"]]


async def test_mixed_batch_keeps_its_valid_messages(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    valid = [FACTORIES[kind]() for kind in EVENT_TYPES]
    invalid = [message for _, message in INVALID_CASES]
    batch: list[Any] = []
    for index in range(max(len(valid), len(invalid))):
        batch += valid[index : index + 1] + invalid[index : index + 1]
    body = ok(await post(client, "/v1/batch", {"batch": batch}), accepted=len(valid))
    assert [r["code"] for r in body["rejected"]] == [code for code, _ in INVALID_CASES]
    assert [batch[r["index"]] for r in body["rejected"]] == invalid
    events = await stored(redis, settings)
    assert [e.message_id for e in events] == [m["messageId"] for m in valid]
    invalid_ids = {m["messageId"] for m in invalid if isinstance(m, dict) and "messageId" in m}
    assert not invalid_ids & {e.message_id for e in events}


async def test_a_rejected_single_message_is_still_200(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    message = track(event=None)
    body = ok(await post(client, "/v1/track", message), accepted=0)
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [(0, "missing_event")]
    assert await stored(redis, settings) == []


# --- values past what the buffer and later stages hold --------------------------------------


def batch_around(raw_message: bytes, **envelope: Any) -> tuple[bytes, list[dict[str, Any]]]:
    """A batch body with ``raw_message`` (JSON text) between two good messages."""
    good = [track(), identify()]
    items = [json.dumps(good[0]).encode(), raw_message, json.dumps(good[1]).encode()]
    rest = b"".join(b',"%s":%s' % (k.encode(), json.dumps(v).encode()) for k, v in envelope.items())
    return b'{"batch":[' + b",".join(items) + b"]" + rest + b"}", good


def nested(levels: int) -> str:
    """JSON text of ``levels`` nested objects and arrays (levels >= 1)."""
    return '{"a":[' * (levels // 2) + ("{}" if levels % 2 else "[]") + "]}" * (levels // 2)


async def post_one_bad_message(
    client: Client, redis: aioredis.Redis, settings: Settings, raw_message: bytes, **envelope: Any
) -> tuple[dict[str, Any], list[Any]]:
    """Post ``raw_message`` between two good ones: the answer is a 200 and both good ones are in
    Redis. Returns the answer and the stored events."""
    body, good = batch_around(raw_message, **envelope)
    answer = ok(await post(client, "/v1/batch", body))
    events = await stored(redis, settings)
    stored_ids = [event.message_id for event in events]
    assert stored_ids[0] == good[0]["messageId"] and stored_ids[-1] == good[1]["messageId"]
    return answer, events


async def test_an_integer_past_64_bits_is_kept_as_a_double(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    # analytics-python writes Python ints as they are; msgpack holds -2**63 .. 2**64 - 1.
    values = {"past": 2**64, "below": -(2**63) - 1, "max": 2**64 - 1, "min": -(2**63)}
    message = track(properties={**values, "list": [2**70, 1]}, context={"n": {"id": 10**30}})
    answer, (_, event, _) = await post_one_bad_message(
        client, redis, settings, json.dumps(message).encode()
    )
    assert (answer["accepted"], answer["rejected"]) == (3, [])
    assert event.message_id == message["messageId"]
    assert event.properties == {
        "past": 1.8446744073709552e19,
        "below": -9.223372036854776e18,
        "max": 2**64 - 1,
        "min": -(2**63),
        "list": [1.1805916207174113e21, 1],
    }
    assert type(event.properties["past"]) is float and type(event.properties["max"]) is int
    assert event.context["n"] == {"id": 1e30}


@pytest.mark.parametrize(
    ("number", "where"),
    [("1" + "0" * 400, "properties.v"), ("1e400", "1e400"), ("-1e999", "-1e999")],
)
async def test_a_number_past_a_double_is_rejected_alone(
    client: Client, redis: aioredis.Redis, settings: Settings, number: str, where: str
) -> None:
    message = track()
    raw = json.dumps(message)[:-1] + f', "properties": {{"v": {number}}}}}'
    answer, events = await post_one_bad_message(client, redis, settings, raw.encode())
    (rejected,) = answer["rejected"]
    assert (rejected["index"], rejected["code"]) == (1, "number_out_of_range")
    assert where in rejected["message"]
    assert len(events) == 2


async def test_an_integer_too_long_to_read_is_rejected_alone(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    # Python refuses to read an integer of more than 4,300 digits.
    raw = json.dumps(track())[:-1] + ', "properties": {"v": 1' + "0" * 5000 + "}}"
    answer, _ = await post_one_bad_message(client, redis, settings, raw.encode())
    assert [(r["index"], r["code"]) for r in answer["rejected"]] == [(1, "number_out_of_range")]


async def test_a_far_future_timestamp_with_a_current_sent_at_is_kept(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    # The correction adds the transit time (received - sentAt) to year 9999: past datetime.max.
    sent_at = iso(datetime.now(UTC) - timedelta(seconds=2))
    message = track(timestamp="9999-12-31T23:59:59.999Z")
    answer, (_, event, _) = await post_one_bad_message(
        client, redis, settings, json.dumps(message).encode(), sentAt=sent_at
    )
    assert (answer["accepted"], answer["rejected"]) == (3, [])
    assert event.original_timestamp == datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    assert event.timestamp == datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (track(timestamp="0001-01-01T00:00:00Z", sentAt="2999-01-01T00:00:00Z"), datetime.min),
        (track(timestamp="9999-12-31T23:00:00-05:00"), datetime.max),
        (track(timestamp="0001-01-01T01:00:00+05:00"), datetime.min),
        (track(timestamp="9000-01-01T00:00:00Z", sentAt="0001-01-01T00:00:00Z"), datetime.max),
    ],
    ids=["ancient-with-sent-at", "offset-past-9999", "offset-before-year-1", "ancient-sent-at"],
)
async def test_timestamps_past_what_a_datetime_holds_are_kept_at_its_ends(
    client: Client, redis: aioredis.Redis, settings: Settings, message: Any, expected: datetime
) -> None:
    answer, (_, event, _) = await post_one_bad_message(
        client, redis, settings, json.dumps(message).encode()
    )
    assert (answer["accepted"], answer["rejected"]) == (3, [])
    assert event.timestamp == expected.replace(tzinfo=UTC)


@pytest.mark.parametrize("levels", [65, 1_000, 20_000])
async def test_a_message_nested_too_deep_is_rejected_alone(
    client: Client, redis: aioredis.Redis, settings: Settings, levels: int
) -> None:
    # The message is the first level: its properties then take the other `levels - 1`.
    message = track()
    raw = json.dumps(message)[:-1] + f', "properties": {nested(levels - 1)}}}'
    answer, events = await post_one_bad_message(client, redis, settings, raw.encode())
    (rejected,) = answer["rejected"]
    assert (rejected["index"], rejected["code"]) == (1, "nesting_too_deep")
    assert rejected["messageId"] == message["messageId"]
    assert "64 levels" in rejected["message"]
    assert len(events) == 2


async def test_a_message_nested_64_levels_is_accepted(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    message = track()
    raw = json.dumps(message)[:-1] + f', "properties": {nested(63)}}}'
    answer, (_, event, _) = await post_one_bad_message(client, redis, settings, raw.encode())
    assert (answer["accepted"], answer["rejected"]) == (3, [])
    assert event.properties == json.loads(nested(63))


@pytest.mark.parametrize("levels", [65, 2_000])
async def test_a_single_message_nested_too_deep_is_rejected(
    client: Client, redis: aioredis.Redis, settings: Settings, levels: int
) -> None:
    raw = json.dumps(track())[:-1] + f', "properties": {nested(levels - 1)}}}'
    body = ok(await post(client, "/v1/track", raw.encode()), accepted=0)
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [(0, "nesting_too_deep")]
    assert await stored(redis, settings) == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"batch": [%s], "context": %s}' % (json.dumps(track()).encode(), nested(64).encode()),
        b'{"batch": [%s], "context": %s}' % (json.dumps(track()).encode(), nested(5000).encode()),
        b'{"batch": %s}' % nested(5000).encode(),
        nested(5000).encode(),
    ],
    ids=["context-64", "context-5000", "batch-5000", "body-5000"],
)
async def test_a_body_nested_too_deep_outside_its_messages_is_400(
    client: Client, redis: aioredis.Redis, settings: Settings, body: bytes
) -> None:
    response = await post(client, "/v1/batch", body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"code", "message"}
    assert response.json()["code"] in ("nesting_too_deep", "invalid_json", "invalid_batch")
    assert await stored(redis, settings) == []


# What strict JSON parsers refuse but clients send: each costs nothing but the odd value.
TOLERATED: list[tuple[str, bytes, Any]] = [
    # JavaScript's `slice` can cut an emoji in half; JSON.stringify escapes the lone half.
    ("lone high surrogate", b'"caf\\ud83d"', "caf\ufffd"),
    ("lone low surrogate", b'"\\ude00!"', "\ufffd!"),
    ("surrogate pair", b'"\\ud83d\\ude00"', "\U0001f600"),
    ("escaped backslash then text", b'"\\\\ud800"', "\\ud800"),
    ("high then escaped backslash", b'"\\ud83d\\\\ude00"', "\ufffd\\ude00"),
    ("bytes that are not UTF-8", b'"\xffcaf\xc3"', "\ufffdcaf\ufffd"),
    # Python's json.dumps writes these for float('nan') and float('inf').
    ("NaN", b"NaN", None),
    ("Infinity", b'[Infinity, -Infinity, "NaN"]', [None, None, "NaN"]),
]


@pytest.mark.parametrize(("what", "value", "expected"), TOLERATED, ids=[t[0] for t in TOLERATED])
async def test_text_strict_parsers_refuse_is_read(
    client: Client,
    redis: aioredis.Redis,
    settings: Settings,
    what: str,
    value: bytes,
    expected: Any,
) -> None:
    def with_value() -> bytes:
        return json.dumps(track())[:-1].encode() + b', "properties": {"v": ' + value + b"}}"

    answer, (_, event, _) = await post_one_bad_message(client, redis, settings, with_value())
    assert (answer["accepted"], answer["rejected"]) == (3, [])
    assert event.properties == {"v": expected}
    # The same in a single message, and in the batch's own context.
    ok(await post(client, "/v1/track", with_value()), accepted=1)
    envelope = b'{"batch": [%s], "context": {"v": %s}}' % (json.dumps(track()).encode(), value)
    ok(await post(client, "/v1/batch", envelope), accepted=1)
    *_, single, in_batch = await stored(redis, settings)
    assert single.properties == {"v": expected}
    assert in_batch.context["v"] == expected


# --- normalisation as stored ----------------------------------------------------------------


async def test_message_id_is_generated_when_missing(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    ok(await post(client, "/v1/track", without(track(), "messageId")), accepted=1)
    ok(await post(client, "/v1/track", without(track(), "messageId")), accepted=1)
    first, second = await stored(redis, settings)
    assert first.message_id and second.message_id
    assert first.message_id != second.message_id


async def test_received_at_is_set_by_the_server(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    before = datetime.now(UTC)
    message = track(receivedAt="2001-01-01T00:00:00.000Z")
    ok(await post(client, "/v1/track", message), accepted=1)
    after = datetime.now(UTC)
    (event,) = await stored(redis, settings)
    assert before <= event.received_at <= after
    assert "receivedAt" not in event.extra


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T03:17:44.656Z",
        "2026-11-26T05:17:44.656+02:00",
        "2026-11-26T03:17:44.656000+00:00",
        "2026-11-25T22:47:44.656-04:30",
    ],
)
async def test_iso_8601_timestamps(
    client: Client, redis: aioredis.Redis, settings: Settings, text: str
) -> None:
    ok(await post(client, "/v1/track", track(timestamp=text)), accepted=1)
    (event,) = await stored(redis, settings)
    expected = datetime(2026, 11, 26, 3, 17, 44, 656_000, tzinfo=UTC)
    assert event.original_timestamp == expected
    assert event.timestamp == expected  # no sentAt: no correction


async def test_microsecond_sent_at(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    body = {
        "batch": [track(timestamp="2026-11-26T03:17:52.952+00:00")],
        "sentAt": "2026-11-26T03:17:53.452421+00:00",
    }
    ok(await post(client, "/v1/batch", body), accepted=1)
    (event,) = await stored(redis, settings)
    assert event.sent_at == datetime(2026, 11, 26, 3, 17, 53, 452421, tzinfo=UTC)
    assert event.timestamp == event.received_at - timedelta(microseconds=500_421)


async def test_explicit_nulls_are_accepted(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    # What analytics-python sends for arguments left out.
    messages = [
        track(anonymousId=None),
        identify(userId=None, anonymousId="anon-1"),
        page(name=None, category=None, anonymousId=None),
        screen(name=None, category=None, anonymousId=None),
        alias(anonymousId=None),
    ]
    ok(await post(client, "/v1/batch", {"batch": messages}), accepted=5)
    t, i, p, s, _ = await stored(redis, settings)
    assert t.anonymous_id is None
    assert (i.user_id, i.anonymous_id) == (None, "anon-1")
    assert (p.name, p.category) == (None, None)
    assert (s.name, s.category) == (None, None)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_clock_skew_correction_with_per_event_sent_at(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    # The device clock runs two hours fast; the event was 4.5 s old when it was sent.
    skewed_now = datetime.now(UTC) + timedelta(hours=2)
    original = skewed_now - timedelta(seconds=4.5)
    message = track(timestamp=iso(original), sentAt=iso(skewed_now))
    before = datetime.now(UTC)
    ok(await post(client, "/v1/t", message), accepted=1)
    after = datetime.now(UTC)
    (event,) = await stored(redis, settings)
    assert event.original_timestamp == datetime.fromisoformat(iso(original))
    assert event.timestamp == event.received_at - (event.sent_at - event.original_timestamp)
    assert before - timedelta(seconds=4.5) <= event.timestamp <= after - timedelta(seconds=4.5)


async def test_clock_skew_correction_falls_back_to_the_batch_sent_at(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    sent = datetime.now(UTC) - timedelta(days=3)  # the device clock is three days slow
    messages = [
        track(timestamp=iso(sent - timedelta(seconds=1))),
        identify(timestamp=iso(sent - timedelta(seconds=10))),
        page(timestamp=iso(sent - timedelta(seconds=20)), sentAt=iso(sent - timedelta(seconds=5))),
    ]
    ok(await post(client, "/v1/batch", {"batch": messages, "sentAt": iso(sent)}), accepted=3)
    t, i, p = await stored(redis, settings)
    assert t.timestamp == t.received_at - timedelta(seconds=1)
    assert i.timestamp == i.received_at - timedelta(seconds=10)
    # A per-event sentAt wins over the envelope's.
    assert p.timestamp == p.received_at - timedelta(seconds=15)


async def test_no_sent_at_keeps_the_original_timestamp(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    original = "2019-07-04T12:00:00.250Z"
    ok(await post(client, "/v1/batch", {"batch": [track(timestamp=original)]}), accepted=1)
    (event,) = await stored(redis, settings)
    expected = datetime(2019, 7, 4, 12, 0, 0, 250_000, tzinfo=UTC)
    assert event.timestamp == event.original_timestamp == expected


async def test_write_key_is_never_stored(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    # The browser puts the key in every event and at the top of /b batches.
    ok(await post(client, "/v1/t", {**track(), "writeKey": KEY}, headers={}), accepted=1)
    batch = {"batch": [{**page(), "writeKey": KEY}, identify()], "writeKey": KEY}
    ok(await post(client, "/v1/b", batch, headers={}), accepted=2)
    entries = await read_entries(redis, settings.key_prefix)
    assert len(entries) == 2
    for entry in entries:
        assert KEY.encode() not in entry.payload
        for event in entry.events:
            assert "writeKey" not in event.extra


async def test_unknown_top_level_fields_are_kept(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    metadata = {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []}
    message = track(_metadata=metadata, options={"consent": "yes"}, protocols={"v": 1})
    ok(await post(client, "/v1/t", message), accepted=1)
    (event,) = await stored(redis, settings)
    assert event.extra == {
        "_metadata": metadata,
        "options": {"consent": "yes"},
        "protocols": {"v": 1},
    }


async def test_batch_context_and_integrations_are_merged_into_items(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    body = {
        "batch": [
            track(context={"library": {"name": "a", "version": "1"}, "ip": "198.51.100.9"}),
            identify(context=None, integrations={"Amplitude": False}),
        ],
        "context": {"ip": "203.0.113.5", "app": {"name": "shop"}},
        "integrations": {"All": False, "Amplitude": True},
    }
    ok(await post(client, "/v1/batch", body), accepted=2)
    t, i = await stored(redis, settings)
    assert t.context["ip"] == "198.51.100.9"  # the item's own value wins
    assert t.context["app"] == {"name": "shop"}
    assert t.context["library"] == {"name": "a", "version": "1"}
    assert i.context["ip"] == "203.0.113.5"
    assert t.integrations == {"All": False, "Amplitude": True}
    assert i.integrations == {"All": False, "Amplitude": False}


# --- dedupe ---------------------------------------------------------------------------------


async def test_same_message_id_twice_is_buffered_once(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    message = track()
    first = ok(await post(client, "/v1/batch", {"batch": [message]}), accepted=1)
    assert first["duplicates"] == 0
    # A retry of the same batch (as every client does, maybe with X-Retry-Count).
    headers = {**AUTH, "X-Retry-Count": "1"}
    second = ok(await post(client, "/v1/batch", {"batch": [message]}, headers=headers), accepted=0)
    assert second["duplicates"] == 1
    events = await stored(redis, settings)
    assert [e.message_id for e in events] == [message["messageId"]]


async def test_duplicates_inside_one_batch_and_across_endpoints(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    message = track()
    body = ok(await post(client, "/v1/batch", {"batch": [message, message, identify()]}))
    assert (body["accepted"], body["duplicates"]) == (2, 1)
    body = ok(await post(client, "/v1/t", message))
    assert (body["accepted"], body["duplicates"]) == (0, 1)
    grouped = events_by_message_id(await stored(redis, settings))
    assert len(grouped) == 2
    assert all(len(events) == 1 for events in grouped.values())


# --- CORS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/t", "/v1/b", "/v1/track", "/v1/batch"])
async def test_cors_preflight(client: Client, path: str) -> None:
    origin = "https://shop.example.com"
    response = await client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-retry-count",
        },
    )
    assert 200 <= response.status_code < 300
    assert response.headers["access-control-allow-origin"] == origin
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "x-retry-count"} <= allowed
    assert "*" not in allowed  # `*` does not cover Authorization
    assert int(response.headers["access-control-max-age"]) > 0


async def test_cors_preflight_allows_custom_requested_headers(client: Client) -> None:
    response = await client.options(
        "/v1/b",
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, X-Custom-Tenant",
        },
    )
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "x-retry-count", "x-custom-tenant"} <= allowed


async def test_cors_on_posts_exposes_retry_after(client: Client) -> None:
    origin = "http://localhost:3000"
    headers = {**AUTH, "Origin": origin, "Content-Type": "text/plain"}
    for response in (
        await post(client, "/v1/t", track(), headers=headers),
        await post(client, "/v1/t", track(), headers={"Origin": origin}),  # a 401
    ):
        assert response.headers["access-control-allow-origin"] == origin
        exposed = {
            h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
        }
        assert "retry-after" in exposed


# --- health and readiness -------------------------------------------------------------------


async def test_healthz_and_readyz(client: Client) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"


async def test_backlog_over_its_cap_is_503(
    settings: Settings,
    app_for: Callable[[Settings], Litestar],
    redis: aioredis.Redis,
) -> None:
    capped = msgspec.structs.replace(settings, backlog_max_entries=1, retry_after_seconds=7)
    async with AsyncTestClient(app_for(capped)) as client:
        first = track()
        ok(await post(client, "/v1/track", first), accepted=1)
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        refused = track()
        response = await post(client, "/v1/track", refused)
        error(response, 503, "backlog_full")
        assert response.headers["retry-after"] == "7"
        assert (await client.get("/healthz")).status_code == 200
    events = await read_events(redis, settings.key_prefix)
    assert [e.message_id for e in events] == [first["messageId"]]


# --- replay of real client requests ---------------------------------------------------------


DROP_HEADERS = {"host", "content-length", "connection", "transfer-encoding"}


def substitute_key(
    request: dict[str, Any], key: str
) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """The captured request with ``key`` in place of the fixture's write key."""
    path = request["path"].replace(FIXTURE_KEY, key)
    query = request.get("query") or ""
    if query and "?" not in path:
        path = f"{path}?{query}"
    headers: list[tuple[str, str]] = []
    gzipped = False
    for name, value in request["headers"]:
        lower = name.lower()
        if lower in DROP_HEADERS:
            continue
        if lower == "content-encoding" and value.strip().lower() == "gzip":
            gzipped = True
        if lower == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "basic":
                decoded = base64.b64decode(token).decode().replace(FIXTURE_KEY, key)
                value = f"{scheme} {base64.b64encode(decoded.encode()).decode()}"
            else:
                value = value.replace(FIXTURE_KEY, key)
        headers.append((name, value))
    body = base64.b64decode(request["body_base64"])
    if body:
        plain = gzip.decompress(body) if gzipped else body
        plain = plain.replace(FIXTURE_KEY.encode(), key.encode())
        body = gzip.compress(plain) if gzipped else plain
    return request["method"], path, headers, body


def fixture_requests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for file in sorted(FIXTURES.glob("*.jsonl")):
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if line.strip():
                found.append((f"{file.name}:{number}", json.loads(line)))
    assert found, f"no requests in {FIXTURES}"
    return found


def messages_of(body: bytes) -> list[dict[str, Any]]:
    data = json.loads(body)
    return data["batch"] if isinstance(data.get("batch"), list) else [data]


async def replay_fixtures(client: Client) -> tuple[list[str], int]:
    """Send every captured request; return the messageIds sent and the count of duplicates."""
    message_ids: list[str] = []
    duplicates = 0
    for name, request in fixture_requests():
        method, path, headers, body = substitute_key(request, KEY)
        response = await client.request(method, path, headers=headers, content=body)
        assert 200 <= response.status_code < 300, f"{name}: {response.status_code} {response.text}"
        origin = dict((k.lower(), v) for k, v in headers).get("origin")
        if origin:
            assert response.headers.get("access-control-allow-origin") in (origin, "*"), name
        if method == "GET":
            segment = response.json()["integrations"]["Segment.io"]
            assert segment["apiKey"] == KEY
        if method != "POST":
            continue
        plain = (
            gzip.decompress(body)
            if any(k.lower() == "content-encoding" and v.lower() == "gzip" for k, v in headers)
            else body
        )
        messages = messages_of(plain)
        answer = ok(response)
        assert answer["rejected"] == [] and answer["dropped"] == [], name
        assert answer["accepted"] + answer["duplicates"] == len(messages), name
        duplicates += answer["duplicates"]
        message_ids += [m["messageId"] for m in messages]
    return message_ids, duplicates


async def test_replay_of_real_client_requests(
    client: Client, redis: aioredis.Redis, settings: Settings
) -> None:
    message_ids, duplicates = await replay_fixtures(client)
    assert duplicates == 0
    assert len(message_ids) == len(set(message_ids)) > 0
    events = await stored(redis, settings)
    grouped = events_by_message_id(events)
    assert set(grouped) == set(message_ids)
    assert all(len(copies) == 1 for copies in grouped.values())
    assert {e.project_id for e in events} == {SOURCE.id}
    for entry in await read_entries(redis, settings.key_prefix):
        assert KEY.encode() not in entry.payload
        assert FIXTURE_KEY.encode() not in entry.payload

    # The clients retry with the same ids: a second replay buffers nothing new.
    again, duplicates = await replay_fixtures(client)
    assert duplicates == len(again) == len(message_ids)
    assert len(await stored(redis, settings)) == len(events)
