"""The collector's HTTP face: a Litestar app served by Granian.

Ingestion routes are raw ASGI handlers: they read the body straight from the ASGI channel
(Litestar's body handling costs 60-80 µs a request, more than the rest of the pipeline), apply
the size limits and the read timeout while reading and while decoding its Content-Encoding, and
answer CORS themselves. Everything else (health, readiness, plugins, browser settings, plugin
routes) is ordinary Litestar.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import zlib
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import brotli
import msgspec
import pluggy
import redis.asyncio as aioredis
from litestar import Litestar, Request, Response, Router, get
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send
from redis.exceptions import RedisError, ResponseError

from signalsmith.admin import ADMIN_PATH, make_admin_guard
from signalsmith.boot import plugin_manager_for, start_runtime, stop_runtime
from signalsmith.buffer import EventBuffer
from signalsmith.config import Settings
from signalsmith.embedded import RedisServerProcess
from signalsmith.gc_tuning import tune_gc
from signalsmith.hooks import Hooks
from signalsmith.pipeline import Answer, ErrorBody, Pipeline
from signalsmith.plugins import plugin_infos
from signalsmith.records import Credentials, PluginInfo
from signalsmith.runtime import Runtime
from signalsmith.stream import stream_key
from signalsmith.supervisor import read_status
from signalsmith.workspace import UnknownSource, WorkspaceStatus
from signalsmith.workspace_api import workspace_routes

log = logging.getLogger("signalsmith.app")


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

# On shutdown, how long the requests in flight get to finish, and then how long the embedded
# worker gets to deliver and acknowledge what is in the stream, before it stops regardless
# (what it has not acknowledged stays buffered for the next start).
SHUTDOWN_REQUESTS_SECONDS = 10.0
SHUTDOWN_DRAIN_SECONDS = 10.0

CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Retry-Count"
CORS_EXPOSED_HEADERS = "Retry-After, X-RateLimit-Reset"
_json_encoder = msgspec.json.Encoder()


class CollectorState:
    """What the request path needs, filled in by the app's lifespan."""

    runtime: Runtime
    buffer: EventBuffer
    pipeline: Pipeline
    read_deadlines: ReadDeadlines


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def write_keys_from_authorization(value: bytes | None) -> list[str]:
    """The write key in ``Authorization``: Basic ``key:`` or bare ``key``, or a Bearer token."""
    if not value:
        return []
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if not token:
        return []
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return []
        username = decoded.partition(":")[0]
        return [username] if username else []
    if scheme.lower() == "bearer":
        return [token]
    return []


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class BodyTimeout(Exception):
    """The body did not arrive within the read timeout."""


class BodyIncomplete(Exception):
    """The body ended before it was whole: the client went away, or its chunked framing broke.

    Granian says both the same way (``http.disconnect``).
    """


class BadEncoding(Exception):
    """The body is not what its Content-Encoding says."""

    def __init__(self, encoding: str, detail: str) -> None:
        super().__init__(detail)
        self.encoding = encoding
        self.detail = detail


class _Decoder(Protocol):
    def decode(self, data: bytes, room: int) -> bytes:
        """The output of ``data``: all of it, or (about) ``room`` bytes when there is more."""
        ...

    def finish(self) -> None:
        """Raise when the encoded data ended before its end."""
        ...


_GZIP_WBITS = 16 + zlib.MAX_WBITS


class _Gzip:
    """gzip with every member: RFC 1952 lets a body be members end to end (``gzip -c a;
    gzip -c b``). NUL bytes after the last are padding, as gzip(1) reads them; anything else
    after it is an error, not silently dropped."""

    def __init__(self) -> None:
        self._member: Any = zlib.decompressobj(_GZIP_WBITS)
        self._padded = False

    def decode(self, data: bytes, room: int) -> bytes:
        pieces: list[bytes] = []
        # `decompress(data, 0)` would mean no limit: stop once the room is used up.
        while data and room > 0:
            member = self._member
            if member is None:  # between members: another member, or the NUL padding
                if data[0] == 0:
                    self._padded = True
                    data = data.lstrip(b"\x00")
                    continue
                if self._padded:
                    raise zlib.error("data after the NUL bytes that pad the end of the gzip body")
                member = self._member = zlib.decompressobj(_GZIP_WBITS)
            out = member.decompress(data, room)
            pieces.append(out)
            room -= len(out)
            if member.eof:
                data = member.unused_data
                self._member = None
            else:
                data = member.unconsumed_tail
        return b"".join(pieces)

    def finish(self) -> None:
        if self._member is not None:
            raise zlib.error("the gzip data ends early (truncated, or not gzip)")


def _zlib_header(head: bytes) -> bool:
    """Whether ``head`` starts a zlib stream (RFC 1950): deflate, a window, a valid check."""
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


class _Deflate:
    """deflate: zlib-wrapped as RFC 9110 says, or raw deflate, as some clients send it (and
    browsers and curl accept). A raw stream cannot start like a zlib header."""

    def __init__(self) -> None:
        self._inflater: Any = None
        self._head = b""

    def decode(self, data: bytes, room: int) -> bytes:
        inflater = self._inflater
        if inflater is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            wbits = zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS
            inflater = self._inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, room)
        if inflater.unused_data:
            raise zlib.error("data after the end of the deflate stream")
        return out

    def finish(self) -> None:
        if self._inflater is None or not self._inflater.eof:
            raise zlib.error("the deflate data ends early (truncated, or not deflate)")


class _Brotli:
    """br (RFC 7932); brotli 1.2's decompressor can bound the output of each call."""

    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def decode(self, data: bytes, room: int) -> bytes:
        decompressor = self._decompressor
        pieces = [decompressor.process(data, output_buffer_limit=room)]
        room -= len(pieces[0])
        # Output held back by the limit comes out of further calls with no input.
        while room > 0 and not decompressor.can_accept_more_data():
            more = decompressor.process(b"", output_buffer_limit=room)
            if not more:
                break
            pieces.append(more)
            room -= len(more)
        return b"".join(pieces)

    def finish(self) -> None:
        if not self._decompressor.is_finished():
            raise brotli.error("the brotli data ends early (truncated, or not brotli)")


DECODERS: dict[str, Callable[[], _Decoder]] = {"gzip": _Gzip, "deflate": _Deflate, "br": _Brotli}
SUPPORTED_ENCODINGS = ", ".join(DECODERS)


def content_coding(value: bytes | None) -> str | None:
    """The coding a Content-Encoding header names: ``identity`` for none, None if unsupported.

    One coding at most (no client stacks them); ``x-gzip`` is gzip (RFC 9110).
    """
    if value is None:
        return "identity"
    names = [name.strip() for name in value.decode("latin-1").lower().split(",")]
    names = [name for name in names if name and name != "identity"]
    if not names:
        return "identity"
    if len(names) > 1:
        return None
    name = "gzip" if names[0] == "x-gzip" else names[0]
    return name if name in DECODERS else None


async def read_body(receive: Receive, *, limit: int, encoding: str = "identity") -> bytes:
    """The request body, decoded from ``encoding``, refused as soon as it passes ``limit`` bytes.

    A decompression bomb is never inflated past the limit: the decoder is asked for at most
    ``limit + 1`` bytes at a time.
    """
    decoder = None if encoding == "identity" else DECODERS[encoding]()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyIncomplete()
        chunk = message.get("body", b"")
        if chunk:
            if decoder is not None:
                try:
                    chunk = decoder.decode(chunk, limit + 1 - size)
                except (zlib.error, brotli.error) as error:
                    raise BadEncoding(encoding, str(error)) from None
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            if chunk:
                chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if decoder is not None:
        try:
            decoder.finish()
        except (zlib.error, brotli.error) as error:
            raise BadEncoding(encoding, str(error)) from None
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


T = TypeVar("T")


class _Read:
    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False


class ReadDeadlines:
    """Cuts off body reads that outlive ``timeout`` seconds, with one timer for all of them.

    ``asyncio.timeout`` sets and cancels a timer per request, about 4 µs with uvloop; here a
    read costs a dict entry, and one timer, running only while reads are in progress, looks at
    them every quarter of the timeout (a second at most). A read is cut off between ``timeout``
    and ``timeout`` plus that after it began.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._every = min(timeout / 4, 1.0)
        self._reads: dict[asyncio.Task[Any], _Read] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def within(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable``, or raise BodyTimeout once the timeout is past."""
        task = asyncio.current_task()
        if task is None:  # not run as a task: nothing to cancel
            return await awaitable
        loop = task.get_loop()
        read = _Read(task, loop.time() + self.timeout)
        self._reads[task] = read
        if self._timer is None:
            self._timer = loop.call_later(self._every, self._sweep, loop)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not read.expired:
                raise
            task.uncancel()
            raise BodyTimeout() from None
        finally:
            del self._reads[task]

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._reads:
            return
        now = loop.time()
        for read in list(self._reads.values()):
            if read.deadline <= now and not read.expired:
                read.expired = True
                read.task.cancel()
        self._timer = loop.call_later(self._every, self._sweep, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _allowed_headers(requested: bytes | None) -> bytes:
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


def _cors_headers(origin: bytes | None) -> list[tuple[bytes, bytes]]:
    if origin is None:
        return []
    # Echo the origin (not `*`) so browsers configured with credentials:'include' work too.
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", CORS_EXPOSED_HEADERS.encode()),
        (b"vary", b"Origin"),
    ]


_CLOSE = (b"connection", b"close")


async def _send_json(
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


def _error_bytes(code: str, message: str) -> bytes:
    return _json_encoder.encode(ErrorBody(code=code, message=message))


def _timeout_error(timeout: float) -> bytes:
    return _error_bytes(
        "request_timeout",
        f"the request body did not arrive within {timeout:g} s; send it at once "
        "(SIGNALSMITH_BODY_READ_TIMEOUT_SECONDS sets the limit)",
    )


def make_ingest_handler(state: CollectorState) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The raw ASGI handler behind every ingestion path."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin")
        cors = _cors_headers(origin)
        method = scope["method"]
        if method == "OPTIONS":
            requested = _header(scope, b"access-control-request-headers")
            allowed = _allowed_headers(requested)
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
            await _send_json(
                send,
                405,
                _error_bytes("method_not_allowed", f"{path} accepts POST"),
                [*cors, (b"allow", b"POST, OPTIONS")],
            )
            return
        # A client announcing a body it trickles, or never sends, must not hold a connection.
        deadlines = state.read_deadlines
        if path == METRICS_PATH:
            # Browser telemetry: accepted and discarded, so analytics-next stops retrying it.
            try:
                await deadlines.within(_drain(receive))
            except BodyTimeout:
                await _send_json(send, 408, _timeout_error(deadlines.timeout), [*cors, _CLOSE])
                return
            await _send_json(send, 200, b'{"success":true}', cors)
            return
        route = INGEST_ROUTES[path]
        limit = state.runtime.settings.max_request_bytes
        encoding = content_coding(_header(scope, b"content-encoding"))
        if encoding is None:
            named = (_header(scope, b"content-encoding") or b"").decode("latin-1")
            await _send_json(
                send,
                415,
                _error_bytes(
                    "unsupported_encoding",
                    f"Content-Encoding {named!r} is not supported: send the body as it is, or "
                    f"with one of {SUPPORTED_ENCODINGS}",
                ),
                [*cors, (b"accept-encoding", SUPPORTED_ENCODINGS.encode()), _CLOSE],
            )
            return
        try:
            body = await deadlines.within(read_body(receive, limit=limit, encoding=encoding))
        except BodyTooLarge:
            await _send_json(
                send,
                413,
                _error_bytes(
                    "request_too_large",
                    f"request body is over {limit} bytes (after decompression); "
                    "send smaller batches",
                ),
                cors,
            )
            return
        except BadEncoding as error:
            await _send_json(
                send,
                400,
                _error_bytes(
                    f"invalid_{error.encoding}",
                    f"Content-Encoding is {error.encoding} but the body is not: {error.detail}",
                ),
                cors,
            )
            return
        except BodyTimeout:
            # The rest of the body may still come: the connection cannot carry another request.
            await _send_json(send, 408, _timeout_error(deadlines.timeout), [*cors, _CLOSE])
            return
        except BodyIncomplete:
            # Read by no one if the client went away; a client whose chunked framing broke
            # learns why (Granian would otherwise answer a bare 500).
            await _send_json(
                send,
                400,
                _error_bytes(
                    "incomplete_body",
                    "the request body ended before it was whole (connection closed, or a "
                    "malformed chunked encoding)",
                ),
                [*cors, _CLOSE],
            )
            return
        client = scope.get("client")
        answer: Answer = await state.pipeline.ingest(
            body,
            path=path,
            path_type=route.path_type,
            batch=route.batch,
            header_keys=write_keys_from_authorization(_header(scope, b"authorization")),
            client_ip=client[0] if client else None,
            stamp_ip=route.browser,
        )
        headers = [*cors, *((k.encode(), v.encode()) for k, v in answer.headers.items())]
        await _send_json(send, answer.status, _json_encoder.encode(answer.body), headers)

    return handle


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class Health(msgspec.Struct, frozen=True):
    status: str
    detail: str = ""


class Readiness(Health, frozen=True):
    # The workspace version this process runs (None: no workspace applied).
    workspace_version: int | None = None


class BrowserSettings(msgspec.Struct, frozen=True):
    """The minimal CDN settings that make analytics-next send everything to this host."""

    integrations: dict[str, Any]
    metrics: dict[str, Any]
    remotePlugins: list[Any]
    enabledMiddleware: dict[str, Any]


class CollectorApp(Litestar):
    """The Litestar app, with ingestion requests handed straight to their raw ASGI handler.

    Litestar's router and middleware cost about as much per request as the whole ingestion
    handler (profiled under load: routing, the exception middleware wrapping every ``send``), so
    a request whose path is exactly an ingestion path skips them. Every other request, and odd
    spellings of ingestion paths, go through Litestar, where the same handler is also routed.
    """

    ingest_paths: frozenset[str] = frozenset()
    ingest_handler: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
    # HTTP requests being answered now: shutdown waits for them before stopping the worker.
    requests_in_flight: int = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        self.requests_in_flight += 1
        try:
            await self._answer(scope, receive, send)
        finally:
            self.requests_in_flight -= 1

    async def _answer(self, scope: Any, receive: Any, send: Any) -> None:
        handler = self.ingest_handler
        if handler is None or scope["path"] not in self.ingest_paths:
            await super().__call__(scope, receive, send)
            return
        try:
            await handler(scope, receive, send)
        except Exception:
            # What Litestar's exception middleware would do: log, and answer 500 if we still can.
            log.exception("ingestion request to %s failed", scope["path"])
            try:
                await _send_json(
                    send, 500, _error_bytes("internal_error", "internal server error"), []
                )
            except Exception:  # the response had started: the server closes the connection
                pass


def create_app(
    settings: Settings | None = None, pm: pluggy.PluginManager | None = None
) -> Litestar:
    """The collector app; Granian calls this as a factory (``signalsmith.app:create_app``)."""
    settings = settings or Settings.from_env()
    pm = pm or plugin_manager_for(settings)
    state = CollectorState()
    health = HealthCheck(settings)

    @asynccontextmanager
    async def lifespan(app: CollectorApp):  # type: ignore[no-untyped-def]
        role = "embedded" if settings.embedded_worker else "collector"
        runtime = await start_runtime(settings, role, pm=pm)
        state.runtime = runtime
        app.state.runtime = runtime  # for tests and tools holding the app
        state.buffer = EventBuffer(
            runtime.redis,
            key_prefix=settings.key_prefix,
            backlog_max_entries=settings.backlog_max_entries,
            dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
            max_pending_appends=settings.max_pending_appends,
            retry_after_seconds=settings.retry_after_seconds,
        )
        state.pipeline = Pipeline(runtime, state.buffer)
        state.read_deadlines = ReadDeadlines(settings.body_read_timeout_seconds)
        worker_stop = asyncio.Event()
        worker_task = None
        if settings.embedded_worker:
            from signalsmith.worker import Worker

            worker_task = asyncio.create_task(Worker(runtime).run(worker_stop), name="worker")
            health.worker_task = worker_task
        tune_gc()
        try:
            yield
        finally:
            # In order: the server has stopped accepting; the requests in flight get their
            # answers, the worker delivers and acknowledges what they buffered, and only then
            # does anything close.
            await _finish_requests(app)
            if worker_task is not None:
                await _drain_sinks(app, runtime, worker_task)
                worker_stop.set()
                try:
                    await asyncio.wait_for(worker_task, timeout=30)
                except TimeoutError:
                    log.warning("the embedded worker did not finish its batches in 30 s")
            state.read_deadlines.close()
            await state.buffer.close()
            await stop_runtime(runtime)

    ingest_handler = make_ingest_handler(state)
    ingest = asgi(path=[*INGEST_ROUTES, METRICS_PATH], name="ingest", copy_scope=False)(
        ingest_handler
    )

    @get("/healthz", sync_to_thread=False)
    def healthz() -> Response[Health]:
        """The process is up, and so are the parts it runs itself (the embedded Redis, the
        embedded worker); otherwise 503, saying which and why."""
        problems = health.problems()
        if problems:
            return Response(
                Health(status="unavailable", detail="; ".join(problems)), status_code=503
            )
        return Response(Health(status="ok", detail=health.redis_detail()))

    @get("/readyz")
    async def readyz() -> Response[Readiness]:
        """Redis answers and the backlog is under its cap: this collector can take events."""
        ready, detail = await state.buffer.ready()
        problems = health.problems()
        return Response(
            Readiness(
                status="ok" if ready and not problems else "unavailable",
                detail="; ".join([detail, *problems]),
                workspace_version=state.runtime.workspace.status().version,
            ),
            status_code=200 if ready and not problems else 503,
        )

    @get("/api/v1/plugins", sync_to_thread=False)
    def list_plugins() -> list[PluginInfo]:
        """Installed plugins, their versions and the hooks they implement."""
        return plugin_infos(pm)

    public_address = PublicAddress(settings)

    @get("/v1/projects/{write_key:str}/settings")
    async def browser_settings(request: Request[Any, Any, Any]) -> Response[Any]:
        """Settings for analytics-next, pointing its apiHost at this collector.

        Where that is comes from the settings (``SIGNALSMITH_PUBLIC_URL``), or from the
        forwarded headers of a trusted proxy; never from a client's own headers, which a cache
        in front would then serve to everyone.
        """
        write_key: str = request.path_params["write_key"]
        cors = {"Access-Control-Allow-Origin": "*"}
        try:
            source = await state.pipeline.authenticate(
                Credentials(write_keys=(write_key,), path=request.url.path)
            )
        except UnknownSource as error:  # not a source of the workspace (issue 11)
            return Response(
                ErrorBody(code="unknown_source", message=str(error)), status_code=404, headers=cors
            )
        if source is None:
            return Response(
                ErrorBody(code="invalid_write_key", message="write key not recognised"),
                status_code=404,
                headers=cors,
            )
        protocol, host = public_address(request)
        return Response(
            BrowserSettings(
                integrations={
                    "Segment.io": {
                        "apiKey": write_key,
                        "apiHost": f"{host}/v1",
                        "protocol": protocol,
                    }
                },
                metrics={"sampleRate": 0},
                remotePlugins=[],
                enabledMiddleware={},
            ),
            headers=cors,
        )

    @get("/status")
    async def admin_status() -> AdminStatus:
        """What this collector runs: plugins, sinks, and the stream's backlog."""
        ready, detail = await state.buffer.ready()
        active = state.runtime.workspace.active
        workspace_sinks = [sink.name for sink in active.destinations] if active else []
        return AdminStatus(
            ready=ready,
            detail=detail,
            backlog_entries=await state.buffer.backlog() if ready else None,
            sinks=[sink.name for sink in state.runtime.sinks] + workspace_sinks,
            plugins=plugin_infos(pm),
            workspace=state.runtime.workspace.status(),
        )

    hooks = Hooks(pm)
    handlers: list[Any] = [ingest, healthz, readyz, list_plugins, browser_settings]
    handlers += hooks.routes()
    admin_handlers: list[Any] = [admin_status, *workspace_routes(), *hooks.admin_routes()]
    handlers.append(
        Router(
            path=ADMIN_PATH,
            route_handlers=admin_handlers,
            guards=[make_admin_guard(settings)],
            tags=["admin"],
        )
    )

    def current_runtime() -> Runtime:
        return state.runtime

    app = CollectorApp(
        route_handlers=handlers,
        # Any handler (a plugin's too) that declares `runtime: Runtime` receives this process's.
        dependencies={"runtime": Provide(current_runtime, sync_to_thread=False)},
        lifespan=[lifespan],
        # Leave the root logger to the process (CLI, Granian, pytest's caplog).
        logging_config=None,
        openapi_config=_openapi_config(),
        exception_handlers={HTTPException: _http_error},
    )
    paths = [*INGEST_ROUTES, METRICS_PATH]
    app.ingest_paths = frozenset([*paths, *(path + "/" for path in paths)])
    app.ingest_handler = ingest_handler
    return app


async def _finish_requests(app: CollectorApp) -> None:
    """Wait (a bounded time) for the requests being answered to get their answers."""
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_REQUESTS_SECONDS
    # Polled: the count is a bare integer so that keeping it costs requests nothing.
    while app.requests_in_flight and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if app.requests_in_flight:
        log.warning("shutting down with %d requests still unanswered", app.requests_in_flight)


async def _drain_sinks(
    app: CollectorApp, runtime: Runtime, worker_task: asyncio.Task[None]
) -> None:
    """Let the embedded worker deliver and acknowledge every entry in the stream, so that an
    event answered 200 before a stop is delivered by this run, not the next (bounded wait)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHUTDOWN_DRAIN_SECONDS
    sinks = {sink.name for sink in runtime.sinks}
    behind: dict[str, str] = {}
    while not worker_task.done():
        try:
            behind = await _undelivered(
                runtime.redis, stream_key(runtime.settings.key_prefix), sinks
            )
        except (RedisError, OSError) as error:
            log.warning("stopping the worker without draining: Redis: %s", error)
            return
        # A request still being answered may yet buffer events.
        if not behind and not app.requests_in_flight:
            return
        if loop.time() >= deadline:
            log.warning(
                "stopping the worker with entries not yet delivered (%s); they stay buffered "
                "for the next start",
                ", ".join(f"{name}: {what}" for name, what in sorted(behind.items())),
            )
            return
        await asyncio.sleep(0.05)


async def _undelivered(redis: aioredis.Redis, stream: str, sinks: set[str]) -> dict[str, str]:
    """The sinks that have not acknowledged every entry of the stream, each with how far."""
    try:
        last = _stream_id((await redis.xinfo_stream(stream))["last-generated-id"])
    except ResponseError:  # no stream yet: nothing was ever accepted
        return {}
    behind = {}
    for group in await redis.xinfo_groups(stream):
        name = _text(group["name"])
        if name not in sinks:
            continue
        unread = _stream_id(group["last-delivered-id"]) < last
        if group["pending"] or unread:
            behind[name] = f"{group['pending']} pending" + (", more unread" if unread else "")
    return behind


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(value: Any) -> tuple[int, int]:
    milliseconds, _, sequence = _text(value).partition("-")
    return int(milliseconds), int(sequence or 0)


class HealthCheck:
    """What ``/healthz`` and ``/readyz`` know beyond Redis answering: the embedded worker task
    and, under the embedded serve, the embedded Redis as its supervisor (in the serve process)
    last described it."""

    def __init__(self, settings: Settings) -> None:
        self.worker_task: asyncio.Task[None] | None = None
        embedded = (
            RedisServerProcess(settings.data_path / "redis", unix_socket=True)
            if settings.redis_url is not None
            else None
        )
        # Only when this process uses the embedded Redis of its data directory.
        self.redis_dir: Path | None = (
            embedded.data_dir
            if embedded is not None and embedded.url == settings.redis_url
            else None
        )

    def problems(self) -> list[str]:
        found = []
        task = self.worker_task
        if task is not None and task.done():
            error = None if task.cancelled() else task.exception()
            found.append(
                f"worker: stopped ({type(error).__name__}; see the server log)"
                if error is not None
                else "worker: stopped"
            )
        if self.redis_dir is not None:
            status = read_status(self.redis_dir)
            if status is not None and status.state != "running":
                found.append(f"redis: {status.detail}")
        return found

    def redis_detail(self) -> str:
        status = read_status(self.redis_dir) if self.redis_dir is not None else None
        return f"redis: {status.detail}" if status is not None else ""


# A host name or address with an optional port: what a forwarded Host may hold.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class PublicAddress:
    """Where browsers reach this collector: ``(protocol, host[:port][/path])``.

    ``SIGNALSMITH_PUBLIC_URL`` when set; else, for a request from one of
    ``SIGNALSMITH_TRUSTED_PROXIES``, its X-Forwarded-Host and X-Forwarded-Proto; else this
    server's own host and port. A client's own Host header never counts.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.public_url:
            parts = urlsplit(settings.public_url)
            self.configured: tuple[str, str] | None = (
                parts.scheme,
                parts.netloc + parts.path.rstrip("/"),
            )
        else:
            self.configured = None
        self.own = ("http", settings.local_url.removeprefix("http://"))
        self.proxies = [
            ipaddress.ip_network(proxy, strict=False) for proxy in settings.trusted_proxies
        ]

    def __call__(self, request: Request[Any, Any, Any]) -> tuple[str, str]:
        if self.configured is not None:
            return self.configured
        if self.proxies and request.client is not None and self._trusted(request.client.host):
            protocol, host = self.own
            forwarded_proto = _last(request.headers.get("x-forwarded-proto")).lower()
            if forwarded_proto in ("http", "https"):
                protocol = forwarded_proto
            forwarded_host = _last(request.headers.get("x-forwarded-host"))
            if _HOST.match(forwarded_host):
                host = forwarded_host
            return protocol, host
        return self.own

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)


def _last(header: str | None) -> str:
    """The last value of a comma-separated forwarded header: the one the nearest proxy (the
    trusted one) set; a proxy that appends keeps whatever the client sent before it."""
    return (header or "").split(",")[-1].strip()


class AdminStatus(msgspec.Struct, frozen=True, kw_only=True):
    ready: bool
    detail: str
    backlog_entries: int | None
    sinks: list[str]
    plugins: list[PluginInfo]
    # The workspace version this collector runs (and one it could not, with why).
    workspace: WorkspaceStatus


_ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def _http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorBody]:
    """Every Litestar error as ``{code, message}``, the one error shape of this API."""
    message = error.detail
    if error.extra:
        message = f"{message}: {error.extra}"
    return Response(
        ErrorBody(code=_ERROR_CODES.get(error.status_code, "error"), message=message),
        status_code=error.status_code,
        headers=error.headers,
    )


def _openapi_config() -> Any:
    from litestar.openapi import OpenAPIConfig

    from signalsmith import __version__

    return OpenAPIConfig(title="SignalSmith", version=__version__, path="/schema")
