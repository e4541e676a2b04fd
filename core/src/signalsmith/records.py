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
    "skipped",
    "buffered",
    "delivered",
    "retried",
    "dead_lettered",
]


class Outcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What happened to one event at one stage; observers (debugger, metrics) receive these.

    ``event`` is the event as the stage left it (the object the pipeline holds, not a copy:
    observers must not change it). A message refused before it became an event (a 401, a
    rejection at normalisation) carries its raw JSON in ``payload`` instead, when it had one.
    """

    stage: str
    status: StageStatus
    message_id: str | None
    source_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    sink: str | None = None
    event: Event | None = None
    payload: bytes | None = None


class StageResult(msgspec.Struct, kw_only=True):
    """What a validate/transform/consent hook returns when it changes the batch.

    ``events`` replaces the batch for the following stages; ``dropped`` says why each removed
    event was removed; ``outcomes`` reports anything else worth observing (violations, edits).
    """

    events: list[Event]
    dropped: list[Drop] = []
    outcomes: list[Outcome] = []


SinkKind = Literal["destination", "warehouse"]


class Routing(msgspec.Struct, frozen=True, kw_only=True):
    """Which events a sink takes. The worker applies it before the sink's plugin sees a batch,
    so no destination filters for itself; events a sink does not take are acknowledged for it.

    Every rule that is set must hold: the event's type is in ``types``, a track's event name
    matches one of ``events`` (shell-style patterns such as ``Order *``; other types pass this
    rule), and the event's consent (``context.consent.categoryPreferences``) grants every
    category in ``consent``. An event without a consent object is not held back by ``consent``
    (Segment's rule); an empty preferences object grants nothing.
    """

    types: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    consent: tuple[str, ...] = ()


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
    routing: Routing = Routing()
    options: dict[str, Any] = {}


class DeliveryReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a sink says about a batch event by event (``deliver_events`` and ``write_events``
    may return one). Events it does not name were delivered.

    ``retry`` events are tried again, without the others, after a backoff (``retry_after``
    seconds when set); ``rejected`` events are dead-lettered at once. Both map a
    ``message_id`` to its reason, which observers and the dead-letter stream are told.
    """

    retry: dict[str, str] = {}
    rejected: dict[str, str] = {}
    retry_after: float | None = None


TransformFunction = Callable[[Source, list[Event]], Any]


class TransformType(msgspec.Struct, frozen=True, kw_only=True):
    """A kind of in-flight transformation a plugin provides (``register_transforms``).

    Configuration makes named instances of it: the core checks an instance's settings against
    ``settings`` (a msgspec Struct type; None when the type takes none) and calls
    ``build(settings)`` once, at startup, for the instance's function, which is called as
    ``apply(source, events)`` and follows the ``transform_events`` return contract.
    """

    name: str
    build: Callable[[Any], TransformFunction]
    settings: type[msgspec.Struct] | None = None
    plugin: str = ""
    description: str = ""


class Transform(msgspec.Struct, frozen=True, kw_only=True):
    """A configured transform instance: the name a source lists, and the function it runs."""

    name: str
    type: str
    apply: TransformFunction
    plugin: str = ""


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One installed plugin, as `signalsmith plugins` and `GET /api/v1/plugins` list it."""

    name: str
    version: str | None
    hooks: list[str]


class SinkError(Exception):
    """Raised by a sink when a batch could not be delivered and should be retried."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSinkError(SinkError):
    """Raised by a sink when retrying cannot help (bad credentials, a 400): dead-letter now."""
