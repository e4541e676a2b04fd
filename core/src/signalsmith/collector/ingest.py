"""Ingestion over HTTP: the raw ASGI handler behind every Segment path, and the HTTP edge.

The handler reads the body (`collector.body`), hands the request to the pipeline, and turns its
verdict into the HTTP answer: this is the one place that decides statuses and headers
(``answer_for``). Litestar's routing and middleware cost as much per request as the whole
pipeline, so ingestion requests skip them (`collector.app`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
from litestar.types import Receive, Scope, Send

from signalsmith.collector.body import (
    SUPPORTED_ENCODINGS,
    BadEncoding,
    BodyIncomplete,
    BodyTimeout,
    BodyTooLarge,
    content_coding,
    read_body,
)
from signalsmith.collector.http import (
    CLOSE,
    ErrorBody,
    allowed_headers,
    cors_headers,
    drain,
    error_bytes,
    header,
    json_encoder,
    send_json,
)
from signalsmith.pipeline import Accepted, IngestRequest, Refused, Verdict

if TYPE_CHECKING:
    from signalsmith.collector.app import CollectorState


class Route(msgspec.Struct, frozen=True):
    """What an ingestion path means: the type it implies, and whether its body is a batch."""

    path_type: str | None
    batch: bool | None
    browser: bool = False


_TYPES = ("track", "identify", "page", "screen", "group", "alias")
INGEST_ROUTES: dict[str, Route] = {
    "/api/v1/events": Route(None, None),
    **{f"/v1/{kind}": Route(kind, False) for kind in _TYPES},
    # analytics-next posts one event to /v1/<first letter of the type> (text/plain, CORS).
    **{f"/v1/{kind[0]}": Route(kind, False, browser=True) for kind in _TYPES},
    "/v1/batch": Route(None, True),
    "/v1/import": Route(None, True),
    "/v1/b": Route(None, True, browser=True),
}
METRICS_PATH = "/v1/m"


class DroppedReport(msgspec.Struct, frozen=True, omit_defaults=True):
    index: int
    message_id: str = msgspec.field(name="messageId")
    stage: str
    reason: str
    detail: str = ""


class RejectedReport(msgspec.Struct, frozen=True):
    index: int
    message_id: str | None = msgspec.field(name="messageId")
    code: str
    message: str


class SuccessBody(msgspec.Struct, frozen=True, kw_only=True):
    """A 200 answer: how many messages were buffered, and what happened to the others."""

    success: bool = True
    accepted: int
    duplicates: int = 0
    rejected: list[RejectedReport] = []
    dropped: list[DroppedReport] = []


# The status each kind of refusal gets; a plugin's own refusal may name another 4xx.
REFUSAL_STATUS = {
    "invalid": 400,
    "too_large": 413,
    "unauthenticated": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "unavailable": 503,
    "failed": 500,
}


def answer_for(verdict: Verdict) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The HTTP status, JSON body and headers of a pipeline verdict."""
    if isinstance(verdict, Accepted):
        body = SuccessBody(
            accepted=verdict.accepted,
            duplicates=verdict.duplicates,
            rejected=[
                RejectedReport(
                    index=rejection.index,
                    message_id=rejection.message_id,
                    code=rejection.code,
                    message=rejection.message,
                )
                for rejection in verdict.rejected
            ],
            dropped=[
                DroppedReport(
                    index=drop.index,
                    message_id=drop.message_id,
                    stage=drop.stage,
                    reason=drop.reason,
                    detail=drop.detail,
                )
                for drop in verdict.dropped
            ],
        )
        return 200, json_encoder.encode(body), []
    return _refused_answer(verdict)


def _refused_answer(verdict: Refused) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    status = verdict.status or REFUSAL_STATUS[verdict.reason]
    headers: list[tuple[bytes, bytes]] = []
    # Only a wait cures a 429 or a 503: they alone say how long (a plugin's other 4xx does not,
    # so clients do not wait and retry what cannot succeed).
    if status in (429, 503) and verdict.retry_after is not None:
        headers.append((b"retry-after", str(verdict.retry_after).encode()))
        if status == 429:
            reset = verdict.reset_after if verdict.reset_after is not None else verdict.retry_after
            headers.append((b"x-ratelimit-reset", str(reset).encode()))
    return (
        status,
        json_encoder.encode(ErrorBody(code=verdict.code, message=verdict.message)),
        headers,
    )


def timeout_error(timeout: float) -> bytes:
    return error_bytes(
        "request_timeout",
        f"the request body did not arrive within {timeout:g} s; send it at once "
        "(SIGNALSMITH_BODY_READ_TIMEOUT_SECONDS sets the limit)",
    )


def make_ingest_handler(state: CollectorState) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The raw ASGI handler behind every ingestion path."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        origin = header(scope, b"origin")
        cors = cors_headers(origin)
        method = scope["method"]
        if method == "OPTIONS":
            requested = header(scope, b"access-control-request-headers")
            allowed = allowed_headers(requested)
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *cors,
                        (b"access-control-allow-methods", b"POST, OPTIONS"),
                        (b"access-control-allow-headers", allowed),
                        (b"access-control-max-age", b"86400"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        path = scope["path"].rstrip("/") or "/"
        if method != "POST":
            await send_json(
                send,
                405,
                error_bytes("method_not_allowed", f"{path} accepts POST"),
                [*cors, (b"allow", b"POST, OPTIONS")],
            )
            return
        # A client announcing a body it trickles, or never sends, must not hold a connection.
        deadlines = state.read_deadlines
        if path == METRICS_PATH:
            # Browser telemetry: accepted and discarded, so analytics-next stops retrying it.
            try:
                await deadlines.within(drain(receive))
            except BodyTimeout:
                await send_json(send, 408, timeout_error(deadlines.timeout), [*cors, CLOSE])
                return
            await send_json(send, 200, b'{"success":true}', cors)
            return
        route = INGEST_ROUTES[path]
        limit = state.runtime.settings.max_request_bytes
        encoding = content_coding(header(scope, b"content-encoding"))
        if encoding is None:
            named = (header(scope, b"content-encoding") or b"").decode("latin-1")
            await send_json(
                send,
                415,
                error_bytes(
                    "unsupported_encoding",
                    f"Content-Encoding {named!r} is not supported: send the body as it is, or "
                    f"with one of {SUPPORTED_ENCODINGS}",
                ),
                [*cors, (b"accept-encoding", SUPPORTED_ENCODINGS.encode()), CLOSE],
            )
            return
        try:
            body = await deadlines.within(read_body(receive, limit=limit, encoding=encoding))
        except BodyTooLarge:
            await send_json(
                send,
                413,
                error_bytes(
                    "request_too_large",
                    f"request body is over {limit} bytes (after decompression); "
                    "send smaller batches",
                ),
                cors,
            )
            return
        except BadEncoding as error:
            await send_json(
                send,
                400,
                error_bytes(
                    f"invalid_{error.encoding}",
                    f"Content-Encoding is {error.encoding} but the body is not: {error.detail}",
                ),
                cors,
            )
            return
        except BodyTimeout:
            # The rest of the body may still come: the connection cannot carry another request.
            await send_json(send, 408, timeout_error(deadlines.timeout), [*cors, CLOSE])
            return
        except BodyIncomplete:
            # Read by no one if the client went away; a client whose chunked framing broke
            # learns why (Granian would otherwise answer a bare 500).
            await send_json(
                send,
                400,
                error_bytes(
                    "incomplete_body",
                    "the request body ended before it was whole (connection closed, or a "
                    "malformed chunked encoding)",
                ),
                [*cors, CLOSE],
            )
            return
        client = scope.get("client")
        verdict = await state.pipeline.ingest(
            IngestRequest(
                body=body,
                path=path,
                path_type=route.path_type,
                batch=route.batch,
                authorization=header(scope, b"authorization"),
                client_ip=client[0] if client else None,
                stamp_ip=route.browser,
            )
        )
        status, answer, headers = answer_for(verdict)
        await send_json(send, status, answer, [*cors, *headers])

    return handle
