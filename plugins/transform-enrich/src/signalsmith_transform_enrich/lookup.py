"""Lookups from an external HTTP service, made cheap and safe for the request path.

Per batch, each distinct key is looked up once: from the cache (answers, 404s included, are
kept ``cache_seconds``), else by a GET to ``url`` (``{key}`` replaced, URL-encoded), at most
``concurrency`` at once, each given ``timeout_seconds`` from start to end. A failure (timeout,
refused connection, an answer other than 2xx or 404, a body that is not a JSON object) counts
against the circuit breaker; while it is open no request is made at all. Requests go only to
addresses the guard accepts, to the very address it checked (``Host`` and TLS SNI keep the
name).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from signalsmith_transform_enrich.breaker import CircuitBreaker
from signalsmith_transform_enrich.guard import AddressGuard, AddressRefused
from signalsmith_transform_enrich.settings import LookupSettings


class Found(msgspec.Struct, frozen=True):
    """An answer: the data (None when the service has no entry for the key)."""

    data: dict[str, Any] | None


class Failed(msgspec.Struct, frozen=True):
    reason: str


class TtlCache:
    """At most ``size`` entries, each for ``seconds``; the least recently used goes first."""

    def __init__(self, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        self._entries: OrderedDict[str, tuple[float, Found]] = OrderedDict()

    def get(self, key: str, now: float) -> Found | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, value: Found, now: float) -> None:
        if self.size == 0 or self.seconds == 0:
            return
        self._entries[key] = (now + self.seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class LookupService:
    """One instance's lookups: its cache, breaker, guard and HTTP client."""

    def __init__(self, settings: LookupSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.cache = TtlCache(settings.cache_size, settings.cache_seconds)
        self.breaker = CircuitBreaker(
            name, settings.breaker.failures, settings.breaker.reset_seconds
        )
        self.guard = AddressGuard(settings.allow_networks)
        self.headers = {"Accept": "application/json", **settings.headers}
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._in_flight: dict[str, asyncio.Future[Found | Failed]] = {}
        # Counts, for logs and tests.
        self.requests = 0
        self.failures = 0

    def _client_here(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # A client and a semaphore belong to one event loop (a process has one; tests several).
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._semaphore is None:
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
            self._semaphore = asyncio.Semaphore(self.settings.concurrency)
            self._in_flight = {}
            self._client_loop = loop
        return self._client, self._semaphore

    async def lookup_all(self, keys: list[str]) -> dict[str, Found | Failed]:
        """Each key's answer or failure; never raises."""
        now = time.monotonic()
        answers: dict[str, Found | Failed] = {}
        wanted: list[str] = []
        for key in keys:
            cached = self.cache.get(key, now)
            if cached is not None:
                answers[key] = cached
            else:
                wanted.append(key)
        if not wanted:
            return answers
        client, semaphore = self._client_here()
        # A key another request's batch is looking up now is waited for, not asked again: at
        # start, or when an entry expires, concurrent requests would otherwise all ask.
        in_flight = self._in_flight
        tasks: dict[str, asyncio.Future[Found | Failed]] = {}
        for key in wanted:
            task = in_flight.get(key)
            if task is None:
                task = asyncio.ensure_future(self._guarded(client, semaphore, key))
                in_flight[key] = task
                task.add_done_callback(lambda _, key=key: in_flight.pop(key, None))
            tasks[key] = task
        await asyncio.wait(tasks.values())
        for key, task in tasks.items():
            answers[key] = task.result()
        return answers

    async def _guarded(
        self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, key: str
    ) -> Found | Failed:
        """One lookup behind the semaphore and the breaker, asked just before the request,
        so lookups queued behind failing ones are not made once the breaker opens."""
        async with semaphore:
            if not self.breaker.allow():
                return Failed(
                    f"the lookup service's circuit is open after {self.breaker.failures} "
                    "failures in a row (no request made)"
                )
            try:
                result = await self._fetch(client, key)
            except BaseException:
                self.breaker.released()
                raise
            # Told before the next queued lookup asks it.
            if isinstance(result, Found):
                self.breaker.succeeded()
                self.cache.put(key, result, time.monotonic())
            else:
                self.failures += 1
                self.breaker.failed()
        return result

    async def _fetch(self, client: httpx.AsyncClient, key: str) -> Found | Failed:
        timeout = self.settings.timeout_seconds
        url = httpx.URL(self.settings.url.replace("{key}", quote(key, safe="")))
        try:
            async with asyncio.timeout(timeout):
                host = url.host
                port = url.port or (443 if url.scheme == "https" else 80)
                address = await self.guard.address(host, port)
                extensions = {"sni_hostname": host} if url.scheme == "https" else {}
                self.requests += 1
                response = await client.get(
                    url.copy_with(host=address),
                    headers={**self.headers, "Host": url.netloc.decode("ascii")},
                    extensions=extensions,
                    timeout=timeout,
                )
        except AddressRefused as refused:
            return Failed(str(refused))
        except TimeoutError:
            return Failed(f"no answer within {timeout:g}s")
        except httpx.HTTPError as error:
            return Failed(
                f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            )
        if response.status_code == 404:
            return Found(None)
        if not 200 <= response.status_code < 300:
            return Failed(f"HTTP {response.status_code}")
        try:
            data = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            return Failed("the answer is not JSON")
        if not isinstance(data, dict):
            return Failed("the answer is not a JSON object")
        if self.settings.select:
            data = {k: data[k] for k in self.settings.select if k in data}
        return Found(data)
