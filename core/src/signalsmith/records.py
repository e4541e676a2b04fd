"""Typed records that cross the boundary between the core and plugins.

Hooks take and return these, never loose dicts, so a plugin author can read a hook's contract
from its signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from signalsmith.model import Event


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """Who sent a request: the owner of the write key that authenticated it."""

    id: str
    name: str
    # A short, non-secret prefix of the key that was used (for logs and listings).
    key_prefix: str = ""
    plan: str = "free"
    settings: dict[str, Any] = {}


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """Every write key a request offered, in the order they should be tried.

    A request can carry a key in Basic auth, in a Bearer token and in the body's ``writeKey``
    at once (analytics-next 1.84 sends two of them); an authenticator accepts the first it knows.
    """

    write_keys: tuple[str, ...]
    remote_addr: str | None = None
    path: str = ""


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """An admit-stage answer that refuses a request: a 429 (rate limit) unless ``status`` says.

    Another 4xx ``status`` is for refusals that waiting cannot cure (a revoked key: 401; a batch
    larger than the key may ever send: 413); those carry no Retry-After.
    """

    retry_after: int
    reason: str = "rate_limited"
    message: str = "rate limit exceeded for this write key"
    # Seconds until the limit fully resets, for `X-RateLimit-Reset`; defaults to retry_after.
    reset_after: int | None = None
    # The HTTP status; only a 429 gets Retry-After and X-RateLimit-Reset.
    status: int = 429


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """A message refused at normalisation, reported to the client by its index in the request."""

    index: int
    message_id: str | None
    code: str
    message: str


class Drop(msgspec.Struct, frozen=True, kw_only=True):
    """An event a stage removed from the batch, with the reason observers are told."""

    event: Event
    reason: str
    detail: str = ""


StageStatus = Literal[
    "accepted",
    "rejected",
    "duplicate",
    "violation",
    "transformed",
    "dropped",
    "buffered",
    "delivered",
    "retried",
    "dead_lettered",
]


class Outcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What happened to one event at one stage; observers (debugger, metrics) receive these."""

    stage: str
    status: StageStatus
    message_id: str | None
    source_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    sink: str | None = None


class StageResult(msgspec.Struct, kw_only=True):
    """What a validate/transform/consent hook returns when it changes the batch.

    ``events`` replaces the batch for the following stages; ``dropped`` says why each removed
    event was removed; ``outcomes`` reports anything else worth observing (violations, edits).
    """

    events: list[Event]
    dropped: list[Drop] = []
    outcomes: list[Outcome] = []


SinkKind = Literal["destination", "warehouse"]


class Sink(msgspec.Struct, frozen=True, kw_only=True):
    """A named place events are delivered to by the worker, each with its own consumer group.

    Registered through ``register_destinations`` or ``register_warehouses``; the core fills
    ``plugin`` with the name of the plugin that registered it, and calls that plugin's
    ``deliver_events`` (destinations) or ``write_events`` (warehouses) with its batches.
    """

    name: str
    kind: SinkKind = "destination"
    plugin: str = ""
    batch_size: int = 500
    max_wait_seconds: float = 1.0
    max_attempts: int = 6
    options: dict[str, Any] = {}


class Transform(msgspec.Struct, frozen=True, kw_only=True):
    """A named in-flight transformation a source can list in its configured order."""

    name: str
    apply: Callable[[Source, list[Event]], Any]
    plugin: str = ""
    description: str = ""


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One installed plugin, as `signalsmith plugins` and `GET /api/v1/plugins` list it."""

    name: str
    version: str | None
    hooks: list[str]


class Secret(msgspec.Struct, frozen=True, kw_only=True):
    """A secret ``embedded_defaults`` prepared (a development write key, an admin token).

    The start banner prints ``value`` only on the start that created it (``new``); every later
    start prints where it is kept (``path``, a file holding just the value) instead, so secrets
    do not pile up in logs. ``command`` is a `signalsmith` command about it, as its arguments
    (``("keys", "list")``), printed beside the path.
    """

    value: str
    new: bool
    path: str
    command: tuple[str, ...] = ()


class CliCommand(msgspec.Struct, frozen=True):
    """A `signalsmith` command for the start banner, as its arguments (``("sql", "SELECT 1")``).

    The banner prints it so that it runs as shown, whether or not the virtualenv is active.
    """

    args: tuple[str, ...]


# What ``embedded_defaults`` returns for each name it adds to the start banner.
BannerValue = str | Secret | CliCommand


class SinkError(Exception):
    """Raised by a sink when a batch could not be delivered and should be retried."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSinkError(SinkError):
    """Raised by a sink when retrying cannot help (bad credentials, a 400): dead-letter now."""
