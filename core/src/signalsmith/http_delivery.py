"""What every HTTP destination plugin shares: one pooled client and rate per destination
instance, batches split into requests, and each answer classified the way
`shared/reference/destinations.md` section 1 does.

- ``status_outcome``: 2xx delivered; 408, 423, 429 and every 5xx but 501 retried; any other
  status refused (dead-lettered with the answer's body). A network error or a timeout is
  retried; an unusable URL is refused.
- ``retry_after_seconds``: a ``Retry-After`` header (delta-seconds or an HTTP-date), clamped to
  1-300 s; the worker waits that long instead of its backoff.
- ``AdaptiveRate``: an instance's requests per second, halved on a 429 and raised again by a
  fixed step per second of success (AIMD), so a destination that throttles slows only its own
  instance.
- ``HttpDestination``: an instance's ``httpx.AsyncClient`` (pooled, HTTP/2 where the server
  offers it over TLS, no redirects), its rate and its concurrency; ``deliver`` sends chunks of
  events and settles each event (``DeliveryReport``): a batch refused as a whole with 400, 413
  or 422 is split in halves until the refused events are found, so only they are
  dead-lettered.
- ``DestinationInstances``: one ``HttpDestination`` per instance and settings, opened on first
  use in the worker and closed once the workspace drops or changes the instance (after its
  requests in flight).

httpx costs about a millisecond of CPU per request (`shared/reference/performance-notes.md`
section 6), so plugins send batches, not one request per event, where the service takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, NamedTuple, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from signalsmith.model import Event
from signalsmith.records import DeliveryReport, Sink
from signalsmith.runtime import Runtime

log = logging.getLogger("signalsmith.http_delivery")
# httpx logs every request at INFO: at a thousand requests a second that is a cost, and noise.
# Failures are logged here, with what was done about them.
logging.getLogger("httpx").setLevel(logging.WARNING)

T = TypeVar("T")
Outcome = Literal["delivered", "retry", "refused"]

# Retry-After is honoured within these bounds (seconds): never hammer, never wait for ever.
RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 300.0
# The most of an answer's body kept in a dead letter's reason.
MAX_KEPT_BODY = 2000
# Statuses a batch refused as a whole is split on, to find the events at fault.
SPLIT_STATUSES = frozenset({400, 413, 422})
# Statuses that mean the instance's settings are wrong (a key, a URL), not the events.
CONFIGURATION_STATUSES = frozenset({401, 403, 404})


def status_outcome(status: int) -> Outcome:
    """What a status means for the events it answered (module docstring)."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 423, 429) or (500 <= status < 600 and status != 501):
        return "retry"
    return "refused"


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP-date), clamped to
    [1, 300]; None when there is none or it cannot be read."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, seconds))


# --- the rate of one instance -------------------------------------------------------------------


class AdaptiveRate:
    """Requests per second for one destination instance, adapting to 429s (AIMD).

    Unlimited until the first throttle unless ``ceiling`` is set. ``throttled()`` halves the
    rate (from the rate actually sent when there was no limit), at most once per second, since
    the concurrent requests of one burst are answered 429 together; ``succeeded()`` adds
    ``increase`` requests per second for every second since the last change, up to the
    ceiling, and lifts the limit again once it is back above the rate that was throttled.
    ``acquire()`` waits for the next free slot. ``clock`` and ``sleep`` are injectable so the
    arithmetic can be checked without waiting.
    """

    def __init__(
        self,
        ceiling: float | None = None,
        *,
        floor: float = 0.2,
        increase: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.ceiling = ceiling
        self.floor = floor
        self.increase = increase
        self.limit: float | None = ceiling
        self._clock = clock
        self._sleep = sleep
        self._next_slot = 0.0
        self._changed = clock()
        self._sent: deque[float] = deque(maxlen=256)
        # The rate sent when an unlimited instance was first throttled: past it, no limit again.
        self._unthrottled: float | None = None
        # How many times the rate was cut (for logs and tests).
        self.throttles = 0

    def sent_per_second(self) -> float:
        """Requests started in the last second (at least one)."""
        now = self._clock()
        return float(max(1, sum(1 for moment in self._sent if now - moment <= 1.0)))

    async def acquire(self) -> None:
        now = self._clock()
        if self.limit is not None:
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.limit
            if slot > now:
                await self._sleep(slot - now)
                now = self._clock()
        self._sent.append(now)

    def throttled(self) -> None:
        now = self._clock()
        if self.limit is not None and now - self._changed < 1.0:
            return  # the same burst
        if self.limit is None:
            self._unthrottled = self.sent_per_second()
            current = self._unthrottled
        else:
            current = self.limit
        self.limit = max(self.floor, current / 2)
        self.throttles += 1
        self._changed = now
        # Nothing more goes out before the new pace allows it.
        self._next_slot = max(self._next_slot, now + 1.0 / self.limit)

    def succeeded(self) -> None:
        if self.limit is None:
            return
        now = self._clock()
        elapsed = now - self._changed
        if elapsed < 1.0:
            return
        self.limit += self.increase * elapsed
        self._changed = now
        if self.ceiling is not None:
            self.limit = min(self.limit, self.ceiling)
        elif self._unthrottled is not None and self.limit >= self._unthrottled:
            self.limit = None
            self._unthrottled = None


# --- requests and their answers ----------------------------------------------------------------


class RequestPlan(NamedTuple):
    """One HTTP request: what ``HttpDestination.deliver`` sends for a chunk of events."""

    method: str
    url: str
    content: bytes
    headers: dict[str, str]


class HttpAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A request's answer, or why there was none (``status`` None: a network error)."""

    url: str
    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = {}
    error: str | None = None
    # The request itself could never work (an unusable URL): refused, not retried.
    unusable: bool = False

    @property
    def outcome(self) -> Outcome:
        if self.status is None:
            return "refused" if self.unusable else "retry"
        return status_outcome(self.status)

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.headers.get("retry-after"))

    @property
    def where(self) -> str:
        """The URL without its query and credentials (which may hold keys), for messages."""
        return _shown(self.url)

    def reason(self) -> str:
        """For observers and dead letters: the status and the answer's body, or the error."""
        where = self.where
        if self.status is None:
            return f"{self.error} ({where})"
        body = self.body[:MAX_KEPT_BODY].decode("utf-8", "replace").strip()
        more = "..." if len(self.body) > MAX_KEPT_BODY else ""
        return f"HTTP {self.status} from {where}" + (f": {body}{more}" if body else "")


def _shown(url: str) -> str:
    """A URL without its query and credentials (which may hold keys), for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def send(client: httpx.AsyncClient, plan: RequestPlan) -> HttpAnswer:
    """Send ``plan``; never raises for what the network or the server did."""
    try:
        response = await client.request(
            plan.method, plan.url, content=plan.content, headers=plan.headers
        )
    except httpx.TimeoutException as error:
        return HttpAnswer(url=plan.url, error=f"timed out ({type(error).__name__})")
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
        return HttpAnswer(url=plan.url, error=f"unusable URL: {error}", unusable=True)
    except httpx.HTTPError as error:
        text = str(error)
        return HttpAnswer(
            url=plan.url, error=f"{type(error).__name__}: {text}" if text else type(error).__name__
        )
    return HttpAnswer(
        url=plan.url,
        status=response.status_code,
        body=response.content,
        headers={key.lower(): value for key, value in response.headers.items()},
    )


# --- events into requests -----------------------------------------------------------------------


class Prepared(NamedTuple):
    """An event and its payload, encoded once: what chunks and bodies are made of."""

    event: Event
    body: bytes


def chunked(
    prepared: Sequence[Prepared],
    *,
    max_events: int,
    max_bytes: int,
    overhead: int = 2,
    separator: int = 1,
) -> list[list[Prepared]]:
    """``prepared`` in order, in chunks of at most ``max_events`` events whose bodies, with
    ``overhead`` bytes per request and ``separator`` bytes between payloads, fit in
    ``max_bytes`` (a payload too large on its own goes alone)."""
    chunks: list[list[Prepared]] = []
    current: list[Prepared] = []
    size = overhead
    for item in prepared:
        extra = len(item.body) + (separator if current else 0)
        if current and (len(current) >= max_events or size + extra > max_bytes):
            chunks.append(current)
            current, size = [], overhead
            extra = len(item.body)
        current.append(item)
        size += extra
    if current:
        chunks.append(current)
    return chunks


class Settlement:
    """What a delivery found out about each event: retry (with why, and when), or refused."""

    def __init__(self) -> None:
        self.retry: dict[str, str] = {}
        self.rejected: dict[str, str] = {}
        self.retry_after: float | None = None

    def retry_later(self, events: Sequence[Prepared], reason: str, after: float | None) -> None:
        for item in events:
            self.retry[item.event.message_id] = reason
        if after is not None:
            self.retry_after = max(after, self.retry_after or 0.0)

    def refuse(self, events: Sequence[Prepared | Event], reason: str) -> None:
        for item in events:
            event = item.event if isinstance(item, Prepared) else item
            self.rejected[event.message_id] = reason

    def report(self) -> DeliveryReport | None:
        if not self.retry and not self.rejected:
            return None
        return DeliveryReport(
            retry=self.retry, rejected=self.rejected, retry_after=self.retry_after
        )


# --- one destination instance ------------------------------------------------------------------


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings every HTTP destination type takes (a plugin's settings Struct extends it)."""

    # Seconds to wait for an answer (a timed-out request is retried) and for a connection.
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    connect_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    # Requests in flight at once for one instance.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    # A ceiling on requests per second; the instance also slows down by itself on 429s.
    max_requests_per_second: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # HTTP/2 when the server offers it (over TLS, by ALPN); HTTP/1.1 otherwise.
    http2: bool = True
    # A PEM file of the certificate authorities to trust instead of the system's (a private
    # CA). Certificates are always verified.
    ca_file: str | None = None


# Reads a 2xx answer that settles events one by one (a multi-status answer, a list of refused
# events): index in the chunk -> (that event's status, reason). Unnamed events were delivered.
PerEvent = Callable[[HttpAnswer, list[Prepared]], dict[int, tuple[int, str]]]


class HttpDestination:
    """One destination instance's HTTP side: its client, its rate and its concurrency."""

    def __init__(self, settings: HttpSettings, *, name: str, user_agent: str) -> None:
        self.name = name
        self.client = httpx.AsyncClient(
            http2=settings.http2,
            verify=ssl.create_default_context(cafile=settings.ca_file)
            if settings.ca_file
            else True,
            timeout=httpx.Timeout(
                settings.timeout_seconds, connect=settings.connect_timeout_seconds
            ),
            limits=httpx.Limits(
                max_connections=settings.concurrency,
                max_keepalive_connections=settings.concurrency,
            ),
            follow_redirects=False,
            headers={"user-agent": user_agent},
        )
        self.rate = AdaptiveRate(settings.max_requests_per_second)
        self.concurrency = settings.concurrency
        self._slots = asyncio.Semaphore(settings.concurrency)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def deliver(
        self,
        chunks: Sequence[list[Prepared]],
        plan: Callable[[list[Prepared]], RequestPlan],
        *,
        per_event: PerEvent | None = None,
        settlement: Settlement | None = None,
    ) -> DeliveryReport | None:
        """Send every chunk (``plan`` makes its request), at most ``concurrency`` at once and
        at the instance's rate, and settle each event. ``per_event(answer, chunk)`` reads a
        2xx answer that settles events one by one (index in the chunk -> (status, reason));
        each named event is retried or refused as its own status says."""
        settlement = settlement or Settlement()
        await asyncio.gather(
            *(self._send_chunk(chunk, plan, per_event, settlement) for chunk in chunks)
        )
        return settlement.report()

    async def _send_chunk(
        self,
        chunk: list[Prepared],
        plan: Callable[[list[Prepared]], RequestPlan],
        per_event: PerEvent | None,
        settlement: Settlement,
    ) -> None:
        request = plan(chunk)
        async with self._slots:
            await self.rate.acquire()
            answer = await send(self.client, request)
        outcome = answer.outcome
        if outcome == "delivered":
            self.rate.succeeded()
            if per_event is not None:
                for index, (status, reason) in per_event(answer, chunk).items():
                    if not 0 <= index < len(chunk):
                        continue
                    verdict = status_outcome(status)
                    if verdict == "retry":
                        settlement.retry_later([chunk[index]], reason, answer.retry_after)
                    elif verdict == "refused":
                        settlement.refuse([chunk[index]], reason)
            return
        if outcome == "retry":
            if answer.status == 429:
                self.rate.throttled()
            settlement.retry_later(chunk, answer.reason(), answer.retry_after)
            return
        if answer.status in SPLIT_STATUSES and len(chunk) > 1:
            # Refused as a whole: find the events at fault, the others go through.
            middle = len(chunk) // 2
            await asyncio.gather(
                self._send_chunk(chunk[:middle], plan, per_event, settlement),
                self._send_chunk(chunk[middle:], plan, per_event, settlement),
            )
            return
        if answer.status in CONFIGURATION_STATUSES or answer.unusable:
            log.error(
                "destination %s: %s; check its settings (dead-lettering %d events)",
                self.name,
                answer.reason(),
                len(chunk),
            )
        settlement.refuse(chunk, answer.reason())


# --- one object per instance -----------------------------------------------------------------


class _Held(Generic[T]):
    __slots__ = ("fingerprint", "retired", "users", "value")

    def __init__(self, fingerprint: bytes, value: T) -> None:
        self.fingerprint = fingerprint
        self.value = value
        self.users = 0
        self.retired = False


def fingerprint(sink: Sink) -> bytes:
    """What identifies an instance's settings: a change means a new client."""
    return sink.type.encode() + b"\0" + msgspec.json.encode(sink.settings)


class DestinationInstances(Generic[T]):
    """One ``build(sink)`` object per destination instance and settings, in this process.

    Opened on the first batch; when a workspace version removes the instance or changes its
    settings, the old object is closed (``close``) as soon as no call uses it any more.
    """

    def __init__(
        self,
        runtime: Runtime,
        build: Callable[[Sink], T],
        close: Callable[[T], Awaitable[None]],
    ) -> None:
        self._build = build
        self._close = close
        self._held: dict[str, _Held[T]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        runtime.workspace.on_change(self._follow)

    @contextlib.asynccontextmanager
    async def use(self, sink: Sink) -> AsyncIterator[T]:
        key = fingerprint(sink)
        held = self._held.get(sink.name)
        if held is None or held.fingerprint != key:
            if held is not None:
                self._retire(held)
            held = self._held[sink.name] = _Held(key, self._build(sink))
        held.users += 1
        try:
            yield held.value
        finally:
            held.users -= 1
            if held.retired and held.users == 0:
                await self._close(held.value)

    def _retire(self, held: _Held[T]) -> None:
        held.retired = True
        if held.users == 0:
            task = asyncio.get_running_loop().create_task(self._close(held.value))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _follow(self, active: Any) -> None:
        wanted = {sink.name: fingerprint(sink) for sink in active.destinations}
        for name, held in list(self._held.items()):
            if wanted.get(name) != held.fingerprint:
                del self._held[name]
                self._retire(held)

    async def aclose(self) -> None:
        for held in self._held.values():
            await self._close(held.value)
        self._held.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def current(self, name: str) -> T | None:
        """The object the instance ``name`` uses now, if it was opened."""
        held = self._held.get(name)
        return held.value if held is not None else None

    def __len__(self) -> int:
        return len(self._held)


__all__ = [
    "AdaptiveRate",
    "DestinationInstances",
    "HttpAnswer",
    "HttpDestination",
    "HttpSettings",
    "PerEvent",
    "Prepared",
    "RequestPlan",
    "Settlement",
    "chunked",
    "retry_after_seconds",
    "send",
    "status_outcome",
]
