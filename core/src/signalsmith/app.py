"""The collector's HTTP face: a Litestar app served by Granian.

Ingestion routes are raw ASGI handlers: they read the body straight from the ASGI channel
(Litestar's body handling costs 60-80 µs a request, more than the rest of the pipeline), apply
the size limits while reading and while inflating gzip, and answer CORS themselves. Everything
else (health, readiness, plugins, browser settings, plugin routes) is ordinary Litestar.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import zlib
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pluggy
from litestar import Litestar, Request, Response, Router, get
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send

from signalsmith.admin import ADMIN_PATH, make_admin_guard
from signalsmith.boot import plugin_manager_for, start_runtime, stop_runtime
from signalsmith.buffer import EventBuffer
from signalsmith.config import Settings
from signalsmith.dlq_api import dead_letter_routes
from signalsmith.gc_tuning import tune_gc
from signalsmith.hooks import Hooks
from signalsmith.pipeline import Answer, ErrorBody, Pipeline
from signalsmith.plugins import plugin_infos
from signalsmith.records import Credentials, PluginInfo
from signalsmith.runtime import Runtime
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

CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Retry-Count"
CORS_EXPOSED_HEADERS = "Retry-After, X-RateLimit-Reset"
_json_encoder = msgspec.json.Encoder()


class CollectorState:
    """What the request path needs, filled in by the app's lifespan."""

    runtime: Runtime
    buffer: EventBuffer
    pipeline: Pipeline


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


async def read_body(receive: Receive, *, limit: int, gzipped: bool) -> bytes:
    """The request body, inflated if gzipped, refused as soon as it passes ``limit`` bytes.

    A gzip bomb is never inflated past the limit: the decompressor is asked for at most
    ``limit + 1`` bytes at a time.
    """
    chunks: list[bytes] = []
    size = 0
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            if inflater is None:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
            else:
                data = chunk
                while data:
                    out = inflater.decompress(data, limit + 1 - size)
                    size += len(out)
                    if size > limit:
                        raise BodyTooLarge(limit)
                    chunks.append(out)
                    data = inflater.unconsumed_tail
        if not message.get("more_body", False):
            break
    if inflater is not None:
        tail = inflater.flush()
        size += len(tail)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(tail)
        if not inflater.eof:
            raise zlib.error("truncated gzip body")
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


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
        if path == METRICS_PATH:
            # Browser telemetry: accepted and discarded, so analytics-next stops retrying it.
            await _drain(receive)
            await _send_json(send, 200, b'{"success":true}', cors)
            return
        route = INGEST_ROUTES[path]
        settings = state.runtime.settings
        limit = settings.max_request_bytes
        gzipped = (_header(scope, b"content-encoding") or b"").strip().lower() == b"gzip"
        try:
            body = await read_body(receive, limit=limit, gzipped=gzipped)
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
        except zlib.error as error:
            await _send_json(
                send,
                400,
                _error_bytes(
                    "invalid_gzip", f"Content-Encoding is gzip but the body is not: {error}"
                ),
                cors,
            )
            return
        except ConnectionError:
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

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        handler = self.ingest_handler
        if handler is None or scope["type"] != "http" or scope["path"] not in self.ingest_paths:
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

    @asynccontextmanager
    async def lifespan(app: Litestar):  # type: ignore[no-untyped-def]
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
        worker_stop = asyncio.Event()
        worker_task = None
        if settings.embedded_worker:
            from signalsmith.worker import Worker

            worker_task = asyncio.create_task(Worker(runtime).run(worker_stop), name="worker")
        tune_gc()
        try:
            yield
        finally:
            if worker_task is not None:
                worker_stop.set()
                try:
                    await asyncio.wait_for(worker_task, timeout=30)
                except TimeoutError:
                    log.warning("the embedded worker did not finish its batches in 30 s")
            await state.buffer.close()
            await stop_runtime(runtime)

    ingest_handler = make_ingest_handler(state)
    ingest = asgi(path=[*INGEST_ROUTES, METRICS_PATH], name="ingest", copy_scope=False)(
        ingest_handler
    )

    @get("/healthz", sync_to_thread=False)
    def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @get("/readyz")
    async def readyz() -> Response[Readiness]:
        """Redis answers and the backlog is under its cap: this collector can take events."""
        ready, detail = await state.buffer.ready()
        return Response(
            Readiness(
                status="ok" if ready else "unavailable",
                detail=detail,
                workspace_version=state.runtime.workspace.status().version,
            ),
            status_code=200 if ready else 503,
        )

    @get("/api/v1/plugins", sync_to_thread=False)
    def list_plugins() -> list[PluginInfo]:
        """Installed plugins, their versions and the hooks they implement."""
        return plugin_infos(pm)

    @get("/v1/projects/{write_key:str}/settings")
    async def browser_settings(request: Request[Any, Any, Any]) -> Response[Any]:
        """Settings for analytics-next, pointing its apiHost at this collector."""
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
        host = request.headers.get("host", f"{settings.host}:{settings.port}")
        protocol = request.headers.get("x-forwarded-proto", request.url.scheme)
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
    admin_handlers: list[Any] = [
        admin_status,
        *workspace_routes(),
        *dead_letter_routes(),
        *hooks.admin_routes(),
    ]
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
