"""The debugger's HTTP side: the page, its API under ``/debugger/api`` (admin token or a debugger
token), and admin endpoints (``/api/v1/admin/trace/{messageId}``, debugger tokens)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from html import escape
from importlib import resources
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.params import Body, Parameter, QueryParameter
from litestar.response import ServerSentEvent

from signalsmith import Runtime, RuntimeDependency
from signalsmith_debugger.access import (
    CreatedToken,
    TokenInfo,
    TokenNotFound,
    Viewer,
    check_source,
    presented_token,
    viewer_for,
)
from signalsmith_debugger.live import Feed, LiveFilter, serve_feed
from signalsmith_debugger.records import STATUS_FILTERS, Trace
from signalsmith_debugger.state import NAME, DebuggerState
from signalsmith_debugger.trace import build_trace

EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
PAGE_PATH = "/debugger"
ViewerDependency = NamedDependency[Viewer]
# Any text, slashes included (a path parameter of type path starts with one).
MessageId = Annotated[str, Parameter(description="The event's messageId.")]
API_PATH = "/debugger/api"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "feed.js": "text/javascript; charset=utf-8",
    "tree.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page runs only its own scripts and talks only to this origin; event data is shown as text.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def asset(name: str) -> bytes:
    return (resources.files("signalsmith_debugger") / "static" / name).read_bytes()


def state_of(runtime: Runtime) -> DebuggerState:
    return runtime.attached(NAME, DebuggerState)


# --- the page ---------------------------------------------------------------------------------


@get(PAGE_PATH, sync_to_thread=False, include_in_schema=False)
def page(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The debugger page (it asks for a token, then reads the API below)."""
    # Its links are relative to <base>: the same page at /debugger and /debugger/, and behind a
    # proxy that mounts the app under a path (ASGI root_path).
    base = f"{request.scope.get('root_path', '')}{PAGE_PATH}/"
    html = asset("index.html").replace(
        b'<base href="/debugger/">', f'<base href="{escape(base)}">'.encode()
    )
    return Response(html, media_type=ASSETS["index.html"], headers=PAGE_HEADERS)


@get(f"{PAGE_PATH}/static/{{name:str}}", sync_to_thread=False, include_in_schema=False)
def static(name: Annotated[str, Parameter(description="A file of the page.")]) -> Response[bytes]:
    if name not in ASSETS or name == "index.html":
        raise NotFoundException(detail=f"no file {name!r} in the debugger's page")
    return Response(asset(name), media_type=ASSETS[name], headers=PAGE_HEADERS)


# --- the API the page reads --------------------------------------------------------------------


async def current_viewer(request: Request[Any, Any, Any], runtime: RuntimeDependency) -> Viewer:
    return await viewer_for(presented_token(request.headers), runtime, state_of(runtime).tokens)


class WhoAmI(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    # None: every source (the admin token).
    sources: list[str] | None
    trace_retention_seconds: int
    payload_bytes: int
    viewer_buffer: int


@get("/whoami")
async def whoami(viewer: ViewerDependency, runtime: RuntimeDependency) -> WhoAmI:
    """Who this token is, and what it sees."""
    config = state_of(runtime).config
    return WhoAmI(
        name=viewer.name,
        sources=sorted(viewer.sources) if viewer.sources is not None else None,
        trace_retention_seconds=config.trace_seconds,
        payload_bytes=config.payload_bytes,
        viewer_buffer=config.viewer_buffer,
    )


class SourceSeen(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: str
    last_seen: datetime


@get("/sources")
async def sources(viewer: ViewerDependency, runtime: RuntimeDependency) -> list[SourceSeen]:
    """The sources with recent events that this token sees."""
    seen = await runtime.redis.hgetall(state_of(runtime).keys.sources)
    listed = [
        SourceSeen(id=_text(source), last_seen=datetime.fromtimestamp(float(at), UTC))
        for source, at in seen.items()
    ]
    return sorted((s for s in listed if viewer.may_see(s.id)), key=lambda s: s.id)


class DebuggerStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    # Outcomes the recorders could not keep lately (queue full, Redis failing), by process role.
    unrecorded: dict[str, int]
    trace_bytes: int
    trace_max_bytes: int
    trace_slices: int
    kept_since: datetime | None
    viewers_here: int


@get("/status")
async def status(viewer: ViewerDependency, runtime: RuntimeDependency) -> DebuggerStatus:
    """What the traces hold against their cap, and whether anything went unrecorded."""
    state = state_of(runtime)
    slices = await state.traces.slices()
    unrecorded = await runtime.redis.hgetall(state.keys.unrecorded)
    oldest = min(slices) if slices else None
    return DebuggerStatus(
        unrecorded={_text(role): int(count) for role, count in unrecorded.items()},
        trace_bytes=sum(slices.values()),
        trace_max_bytes=state.config.trace_max_bytes,
        trace_slices=len(slices),
        kept_since=(
            datetime.fromtimestamp(int(oldest.partition(".")[0]) * state.config.slice_seconds, UTC)
            if oldest
            else None
        ),
        viewers_here=len(state.hub.feeds),
    )


@get("/live")
async def live(
    viewer: ViewerDependency,
    runtime: RuntimeDependency,
    source: Annotated[list[str] | None, QueryParameter(name="source")] = None,
    event_type: Annotated[list[str] | None, QueryParameter(name="type")] = None,
    event: Annotated[str | None, QueryParameter(name="event")] = None,
    user: Annotated[str | None, QueryParameter(name="user")] = None,
    status_filter: Annotated[list[str] | None, QueryParameter(name="status")] = None,
    backfill: Annotated[int, QueryParameter(name="backfill", ge=0, le=1000)] = 100,
) -> ServerSentEvent:
    """Records as they happen, over Server-Sent Events (``records``, ``skipped``, ``stats``)."""
    state = state_of(runtime)
    wanted = live_filter(viewer, source, event_type, event, user, status_filter)
    if state.hub.full():
        raise HTTPException(
            status_code=503,
            detail=f"this process already serves {state.config.max_viewers} live viewers "
            "(SIGNALSMITH_DEBUGGER_MAX_VIEWERS); close one, or try another process",
        )
    feed = Feed(runtime.redis, state.keys, state.config, viewer, wanted, backfill=backfill)

    async def still_allowed() -> bool:
        token = viewer.token_hash
        if token is None:
            return True
        return bool(await runtime.redis.hexists(state.keys.tokens, token))

    return ServerSentEvent(serve_feed(state.hub, feed, still_allowed))


def live_filter(
    viewer: Viewer,
    source: list[str] | None,
    event_type: list[str] | None,
    event: str | None,
    user: str | None,
    status_filter: list[str] | None,
) -> LiveFilter:
    sources = {s for value in source or () for s in value.split(",") if s}
    for name in sources:
        check_source(viewer, name)
    types = {t for value in event_type or () for t in value.split(",") if t}
    unknown = types - set(EVENT_TYPES)
    if unknown:
        raise ClientException(
            detail=f"unknown type {sorted(unknown)[0]!r}: one of {', '.join(EVENT_TYPES)}"
        )
    statuses: set[str] = set()
    for value in status_filter or ():
        for name in (n for n in value.split(",") if n):
            if name not in STATUS_FILTERS:
                raise ClientException(
                    detail=f"unknown status {name!r}: one of {', '.join(STATUS_FILTERS)}"
                )
            statuses |= STATUS_FILTERS[name]
    return LiveFilter(
        sources=frozenset(sources) or None,
        types=frozenset(types),
        event=event or None,
        user=user or None,
        statuses=frozenset(statuses),
    )


@get("/trace/{message_id:path}")
async def viewer_trace(
    viewer: ViewerDependency, runtime: RuntimeDependency, message_id: MessageId
) -> Trace:
    """One event's whole path, as far as this token's sources go."""
    return await trace_of(runtime, message_id.lstrip("/"), viewer)


class ViewerInfo(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    viewer: str
    sources: list[str]
    buffered: int
    skipped: int


@get("/viewers")
async def viewers(viewer: ViewerDependency, runtime: RuntimeDependency) -> list[ViewerInfo]:
    """The live viewers this process serves, with what each has waiting and has skipped (admin
    token only)."""
    if viewer.sources is not None:
        raise PermissionDeniedException("the viewers listing needs the admin token")
    return [
        ViewerInfo(
            viewer=feed.viewer.name,
            sources=sorted(key[len(feed.keys.live_prefix) :] for key in feed.streams),
            buffered=len(feed.buffer),
            skipped=feed.skipped,
        )
        for feed in state_of(runtime).hub.feeds
    ]


async def trace_of(runtime: Runtime, message_id: str, viewer: Viewer | None = None) -> Trace:
    state = state_of(runtime)
    if not message_id:
        raise ClientException(detail="name a messageId: /trace/<messageId>")
    records, kept_since = await state.traces.records(message_id)
    if viewer is not None:
        records = [record for record in records if viewer.may_see(record.source_id)]
    if not records:
        raise NotFoundException(detail=not_traced(message_id, state, kept_since))
    return build_trace(message_id, records, state.config, kept_since)


def not_traced(message_id: str, state: DebuggerState, kept_since: float | None) -> str:
    days = state.config.trace_seconds / 86400
    since = (
        f"; under the memory cap, traces are kept since "
        f"{datetime.fromtimestamp(kept_since, UTC):%Y-%m-%d %H:%M}Z"
        if kept_since is not None
        else ""
    )
    return (
        f"no trace of messageId {message_id!r}: traces are kept {days:g} days{since}. The "
        "collector never received it (a client that could not connect leaves none), or it "
        "came before the debugger was installed"
    )


def api_router() -> Router:
    return Router(
        path=API_PATH,
        route_handlers=[whoami, sources, status, live, viewer_trace, viewers],
        dependencies={"viewer": Provide(current_viewer)},
        tags=["debugger"],
    )


# --- the admin API (the admin token only) ------------------------------------------------------


@get("/trace/{message_id:path}")
async def admin_trace(runtime: RuntimeDependency, message_id: MessageId) -> Trace:
    """Where did this event go? Its whole path, every source."""
    return await trace_of(runtime, message_id.lstrip("/"))


class NewToken(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    sources: list[str]
    name: str = ""
    expires_in_seconds: int | None = None


@get("/debugger/tokens")
async def list_tokens(runtime: RuntimeDependency) -> list[TokenInfo]:
    """Debugger tokens (never the tokens themselves: only their hashes are kept)."""
    return await state_of(runtime).tokens.listing()


@post("/debugger/tokens")
async def create_token(
    runtime: RuntimeDependency, data: Annotated[NewToken, Body()]
) -> CreatedToken:
    """A debugger token for these sources, shown this once."""
    if data.expires_in_seconds is not None and data.expires_in_seconds <= 0:
        raise ClientException(detail="expiresInSeconds must be above 0")
    try:
        return await state_of(runtime).tokens.create(
            data.sources, name=data.name, expires_in=data.expires_in_seconds
        )
    except ValueError as error:
        raise ClientException(detail=str(error)) from None


@delete("/debugger/tokens/{token_id:str}", status_code=200)
async def revoke_token(
    runtime: RuntimeDependency,
    token_id: Annotated[str, Parameter(description="The token's id (or name), as listed.")],
) -> TokenInfo:
    """Revoke a debugger token by its id (or name): its live feeds end within seconds."""
    try:
        return await state_of(runtime).tokens.revoke(token_id)
    except TokenNotFound as error:
        raise NotFoundException(detail=str(error)) from None


def admin_routes() -> list[Any]:
    return [admin_trace, list_tokens, create_token, revoke_token]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
