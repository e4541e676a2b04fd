"""The raw ASGI side of the collector: headers, CORS, and JSON answers sent by hand.

Ingestion requests skip Litestar (`collector.app`), so their answers are written here: every
one is JSON ``{code, message}`` (``ErrorBody``) or a success body, with CORS headers for
browsers.
"""

from __future__ import annotations

import msgspec
from litestar.types import Receive, Scope, Send

CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Retry-Count"
CORS_EXPOSED_HEADERS = "Retry-After, X-RateLimit-Reset"
json_encoder = msgspec.json.Encoder()


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error answer: analytics-python reads exactly these two keys."""

    code: str
    message: str


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def allowed_headers(requested: bytes | None) -> bytes:
    """The fixed list plus whatever else the browser asks for (custom delivery headers).

    Named explicitly: `*` does not cover Authorization, and is literal with credentials.
    """
    names = [name.strip() for name in CORS_ALLOWED_HEADERS.split(",")]
    known = {name.lower() for name in names}
    for name in (requested or b"").decode("latin-1").split(","):
        name = name.strip()
        if name and name.lower() not in known:
            known.add(name.lower())
            names.append(name)
    return ", ".join(names).encode("latin-1")


def cors_headers(origin: bytes | None) -> list[tuple[bytes, bytes]]:
    if origin is None:
        return []
    # Echo the origin (not `*`) so browsers configured with credentials:'include' work too.
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", CORS_EXPOSED_HEADERS.encode()),
        (b"vary", b"Origin"),
    ]


CLOSE = (b"connection", b"close")


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_bytes(code: str, message: str) -> bytes:
    return json_encoder.encode(ErrorBody(code=code, message=message))


async def drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
