"""The collector's HTTP app: Litestar served by Granian, with ingestion taken off its path.

Ingestion paths are raw ASGI handlers (`collector.ingest`): ``CollectorApp`` hands a request
whose path is exactly one of them straight to it, skipping Litestar's router and middleware.
Everything else (health, readiness, plugins, browser settings, the admin API, plugin routes) is
ordinary Litestar, and every route may declare ``runtime: RuntimeDependency``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
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
from signalsmith.collector.body import ReadDeadlines
from signalsmith.collector.browser import BrowserSettings, PublicAddress
from signalsmith.collector.health import Companion, Health, HealthCheck, Readiness
from signalsmith.collector.http import ErrorBody, error_bytes, send_json
from signalsmith.collector.ingest import INGEST_ROUTES, METRICS_PATH, make_ingest_handler
from signalsmith.config import Settings
from signalsmith.dlq_api import dead_letter_routes
from signalsmith.gc_tuning import tune_gc
from signalsmith.hooks import Hooks
from signalsmith.parsing import offered_write_keys
from signalsmith.pipeline import Pipeline
from signalsmith.plugins import plugin_infos
from signalsmith.records import Credentials, PluginInfo
from signalsmith.runtime import Runtime
from signalsmith.workspace import UnknownSource, WorkspaceStatus
from signalsmith.workspace_api import workspace_routes

log = logging.getLogger("signalsmith.collector")

# On shutdown, how long the requests in flight get to finish before the companions stop.
SHUTDOWN_REQUESTS_SECONDS = 10.0


class CollectorState:
    """What the request path needs, filled in by the app's lifespan."""

    runtime: Runtime
    buffer: EventBuffer
    pipeline: Pipeline
    read_deadlines: ReadDeadlines


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
                await send_json(
                    send, 500, error_bytes("internal_error", "internal server error"), []
                )
            except Exception:  # the response had started: the server closes the connection
                pass


def create_app(
    settings: Settings | None = None,
    pm: pluggy.PluginManager | None = None,
    *,
    companions: Sequence[Companion] = (),
) -> CollectorApp:
    """The collector app (Granian's worker builds it through ``signalsmith.server.worker_app``).

    ``companions`` run beside it in its process, started after the runtime and stopped, in
    order, once its requests are answered (the embedded serve's worker).
    """
    settings = settings or Settings.from_env()
    pm = pm or plugin_manager_for(settings)
    state = CollectorState()
    health = HealthCheck(settings, companions)

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
        for companion in companions:
            await companion.start(runtime)
        tune_gc()
        try:
            yield
        finally:
            # In order: the server has stopped accepting; the requests in flight get their
            # answers, the companions (the embedded worker) finish what they buffered, and only
            # then does anything close.
            await _finish_requests(app)
            for companion in companions:
                await companion.stop(lambda: app.requests_in_flight)
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
                Credentials(write_keys=offered_write_keys(None, write_key), path=request.url.path)
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


async def _finish_requests(app: CollectorApp) -> None:
    """Wait (a bounded time) for the requests being answered to get their answers."""
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_REQUESTS_SECONDS
    # Polled: the count is a bare integer so that keeping it costs requests nothing.
    while app.requests_in_flight and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if app.requests_in_flight:
        log.warning("shutting down with %d requests still unanswered", app.requests_in_flight)
