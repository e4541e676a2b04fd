"""HTTP at its edges, against a real `signalsmith serve` (Granian) over raw sockets.

Bodies that are announced and never sent or trickled, headers trickled, broken chunked framing,
and the errors Granian answers itself before the app sees the request.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import redis as sync_redis

from signalsmith.testing import track
from signalsmith.testing.stream import read_events_sync

if TYPE_CHECKING:
    from conftest import Collector

BODY_TIMEOUT = 1.0
HEADER_TIMEOUT = 2.0
# Far past both timeouts: reaching it means the server never gave up on the client.
PATIENCE = 20.0


@pytest.fixture
def edge_collector(
    start_collector: Callable[..., Collector], redis_url: str, key_prefix: str, write_key: str
) -> Collector:
    return start_collector(
        redis_url=redis_url,
        key_prefix=key_prefix,
        write_keys={write_key: "src-edges"},
        extra_env={
            "SIGNALSMITH_BODY_READ_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
            "SIGNALSMITH_HEADER_READ_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        },
    )


class Answer:
    """A raw HTTP/1.1 response, and whether the server closed the connection after it."""

    def __init__(self, raw: bytes, closed: bool) -> None:
        self.raw = raw
        self.closed = closed
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> dict[str, str]:
        assert self.headers.get("content-type", "").startswith("application/json"), self.raw
        body = json.loads(self.body)
        assert set(body) == {"code", "message"} and body["message"], body
        return body


def read_answer(conn: socket.socket) -> Answer:
    """Everything the server sends until it closes the connection or a whole response is in."""
    conn.settimeout(PATIENCE)
    data = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            pytest.fail(f"no answer within {PATIENCE} s; got {data!r}")
        except ConnectionResetError:
            return Answer(data, closed=True)
        if not chunk:
            return Answer(data, closed=True)
        data += chunk
        _, found, body = data.partition(b"\r\n\r\n")
        if found:
            length = Answer(data, closed=False).headers.get("content-length")
            if length is not None and len(body) >= int(length):
                # Whether the server closes now: a closed socket reads b"" at once.
                conn.settimeout(0.5)
                try:
                    closed = conn.recv(1) == b""
                except TimeoutError:
                    closed = False
                except ConnectionResetError:
                    closed = True
                return Answer(data, closed=closed)


def connect(collector: Collector) -> socket.socket:
    return socket.create_connection(("127.0.0.1", collector.port), timeout=PATIENCE)


def request_head(path: str, write_key: str, **headers: str) -> bytes:
    auth = base64.b64encode(f"{write_key}:".encode()).decode()
    lines = [f"POST {path} HTTP/1.1", "Host: collector", f"Authorization: Basic {auth}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def stored(redis_url: str, key_prefix: str) -> list[str]:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        return [event.message_id for event in read_events_sync(client, key_prefix)]
    finally:
        client.close()


def test_a_body_announced_and_never_sent_is_408(edge_collector: Collector, write_key: str) -> None:
    with connect(edge_collector) as conn:
        conn.sendall(request_head("/v1/track", write_key, Content_Length="100"))
        answer = read_answer(conn)
    assert answer.status == 408
    assert answer.json()["code"] == "request_timeout"
    assert answer.closed


def test_a_trickled_body_is_refused(
    edge_collector: Collector, write_key: str, redis_url: str, key_prefix: str
) -> None:
    message = track()
    body = json.dumps(message).encode()
    with connect(edge_collector) as conn:
        conn.sendall(request_head("/v1/track", write_key, Content_Length=str(len(body))))
        conn.settimeout(0.2)
        sent = 0
        try:
            # A byte every 0.2 s: the whole body would take two minutes.
            while sent < len(body):
                conn.sendall(body[sent : sent + 1])
                sent += 1
                try:
                    if conn.recv(1, socket.MSG_PEEK):
                        break  # the server answered before the body was whole
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_answer(conn)
    assert sent < len(body)
    assert answer.status == 408
    assert answer.json()["code"] == "request_timeout"
    assert message["messageId"] not in stored(redis_url, key_prefix)


def test_headers_trickled_are_cut_off(edge_collector: Collector) -> None:
    with connect(edge_collector) as conn:
        conn.sendall(b"POST /v1/track HTTP/1.1\r\nHost: collector\r\n")
        answer = read_answer(conn)  # fails unless the server closes the connection in time
    assert answer.closed and answer.raw == b""


def test_a_body_with_broken_chunked_framing_is_400_json(
    edge_collector: Collector, write_key: str
) -> None:
    with connect(edge_collector) as conn:
        conn.sendall(request_head("/v1/track", write_key, Transfer_Encoding="chunked"))
        conn.sendall(b"zz\r\nnot a chunk size\r\n")
        answer = read_answer(conn)
    # Without the app answering, Granian sends a bare `500 Internal server error`.
    assert answer.status == 400
    assert answer.json()["code"] == "incomplete_body"


def test_an_unsupported_encoding_is_415_json(edge_collector: Collector, write_key: str) -> None:
    with connect(edge_collector) as conn:
        conn.sendall(
            request_head("/v1/track", write_key, Content_Encoding="zstd", Content_Length="4")
            + b"\x28\xb5\x2f\xfd"
        )
        answer = read_answer(conn)
    assert answer.status == 415
    assert answer.json()["code"] == "unsupported_encoding"
    assert answer.headers["accept-encoding"] == "gzip, deflate, br"


def test_a_request_after_a_408_needs_a_new_connection(
    edge_collector: Collector, write_key: str, redis_url: str, key_prefix: str
) -> None:
    with connect(edge_collector) as conn:
        conn.sendall(request_head("/v1/track", write_key, Content_Length="100"))
        assert read_answer(conn).status == 408
    message = track()
    body = json.dumps(message).encode()
    with connect(edge_collector) as conn:
        conn.sendall(request_head("/v1/track", write_key, Content_Length=str(len(body))) + body)
        answer = read_answer(conn)
    assert answer.status == 200, answer.raw
    assert message["messageId"] in stored(redis_url, key_prefix)


# Granian's HTTP/1 parser (hyper) answers these itself, before the application exists for the
# request, with an empty body and `connection: close`; Granian 2.8 offers no way to give them
# a body. docs/input.md says so; these tests notice when that changes.
GRANIAN_ERRORS = {
    "too many header fields": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-Field-%d: v\r\n" % i for i in range(101))
        + b"\r\n",
        431,
    ),
    "request target over 64 KB": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "not HTTP": (b"HELLO\r\n\r\n", 400),
    "Content-Length not a number": (
        b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize("case", list(GRANIAN_ERRORS))
def test_errors_granian_answers_itself(edge_collector: Collector, case: str) -> None:
    request, status = GRANIAN_ERRORS[case]
    with connect(edge_collector) as conn:
        conn.sendall(request)
        answer = read_answer(conn)
    assert answer.status == status
    assert answer.headers.get("connection") == "close"
    assert answer.body == b""
