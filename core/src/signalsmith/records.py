"""Typed records that cross the boundary between the core and plugins.

Hooks take and return these, never loose dicts, so a plugin author can read a hook's contract
from its signature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

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
    # Filled in by the core from the workspace version the process runs (None when no workspace
    # is applied): the source's transform chain, destinations and plugin-owned settings.
    pipeline: SourcePipeline | None = None


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
    ``count`` is 1, except in the batch-level outcomes the collector tells observers that
    declined the routine path (``wants_routine_outcomes``): ``message_id`` None, and ``count``
    events of one request accepted at normalisation, or buffered.
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
    count: int = 1


class StageResult(msgspec.Struct, kw_only=True):
    """What a validate/transform/consent hook returns when it changes the batch.

    ``events`` replaces the batch for the following stages; ``dropped`` says why each removed
    event was removed; ``outcomes`` reports anything else worth observing (violations, edits).
    """

    events: list[Event]
    dropped: list[Drop] = []
    outcomes: list[Outcome] = []


SinkKind = Literal["destination", "warehouse"]


FilterActionType = Literal["DROP", "DROP_PROPERTIES", "ALLOW_PROPERTIES", "SAMPLE"]


class FilterAction(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One action of a destination filter (Segment's ``DestinationFilterActionV1``).

    ``DROP`` drops the event; ``DROP_PROPERTIES`` removes the keys ``fields`` lists under each
    object path (``""`` is the top level: ``{"properties": ["email"], "": ["userId"]}``);
    ``ALLOW_PROPERTIES`` keeps only those keys; ``SAMPLE`` keeps ``percent`` (0-1) of the
    events, by the MD5 of the value at ``path`` when one is given (the same events every time),
    else at random.
    """

    type: FilterActionType
    fields: dict[str, tuple[str, ...]] = {}
    percent: float | None = None
    path: str | None = None


class DestinationFilter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A destination filter as Segment's Public API writes it (``DestinationFilterV1``, less its
    ids): when ``condition`` (FQL, or ``"all"``) holds for an event, ``actions`` apply to it.
    ``source`` limits it to one source's events. The worker applies the actions of every filter
    in Segment's order: samples, then drops, then dropped properties, then allowed properties.
    """

    condition: str = "all"
    actions: tuple[FilterAction, ...] = ()
    title: str = ""
    source: str | None = None
    enabled: bool = True


class Routing(msgspec.Struct, frozen=True, kw_only=True):
    """Which events a sink takes. The worker applies it before the sink's plugin sees a batch,
    so no destination filters for itself; events a sink does not take are acknowledged for it.

    Every rule that is set must hold: the event's type is in ``types`` and not in
    ``deny_types``; a track's event name matches one of ``events`` and none of ``deny_events``
    (shell-style patterns such as ``Order *``; other types pass these rules); ``condition`` (an
    FQL condition, `signalsmith.fql`) holds; and the event's consent
    (``context.consent.categoryPreferences``) grants every category in ``consent``. An event
    without a consent object is not held back by ``consent`` (Segment's rule); an empty
    preferences object grants nothing. ``filters`` (Segment's destination filters) then drop,
    sample or trim the events that passed.
    """

    types: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    consent: tuple[str, ...] = ()
    # The sources (``event.project_id``) whose events the sink takes; None takes every source.
    # A workspace destination takes the sources that list it (none: no events).
    sources: frozenset[str] | None = None
    deny_types: tuple[str, ...] = ()
    deny_events: tuple[str, ...] = ()
    condition: str | None = None
    filters: tuple[DestinationFilter, ...] = ()


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
    # Attempts at a failing event before it is dead-lettered; None: no limit, the retry window
    # decides.
    max_attempts: int | None = 6
    # Seconds from an event's ``received_at`` (or its replay) after which a failing event is
    # dead-lettered; None: ``SIGNALSMITH_WORKER_RETRY_WINDOW_SECONDS``.
    retry_window_seconds: float | None = None
    routing: Routing = Routing()
    options: dict[str, Any] = {}
    # For a destination declared in the workspace: its destination type, and its settings (the
    # type's Struct, placeholders resolved). Settings are resolved only where the sink is
    # delivered (``runtime.delivers``); elsewhere they are None.
    type: str = ""
    settings: Any = None
    # For a destination declared in the workspace: its mappings (``signalsmith.mapping.
    # EventMapping``, compiled once per version): ``mapping.payload(event)`` is what to send.
    mapping: Any = None

    def __repr__(self) -> str:
        # Settings and options may hold resolved secrets: never in reprs, logs or tracebacks.
        return f"Sink(name={self.name!r}, kind={self.kind!r}, plugin={self.plugin!r}, type={self.type!r})"


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


class SettingsError(ValueError):
    """A setting a plugin's own checks refuse (a regex that does not compile, a condition that
    does not parse), raised by a settings Struct's ``__post_init__`` or by a type's ``build``.

    ``path`` is where the setting is inside the instance's settings (``("rules", 0, "match")``);
    the workspace reports it under the instance (``transforms.bots.settings.rules[0].match:
    ...``), with its line. The message is shown as it is: never put a secret's value in it.
    """

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = tuple(path)
        self.message = message


class TransformType(msgspec.Struct, frozen=True, kw_only=True):
    """A kind of in-flight transformation a plugin provides (``register_transforms``).

    Configuration makes named instances of it: the core checks an instance's settings against
    ``settings`` (a msgspec Struct type; None when the type takes none) and calls
    ``build(settings)`` once per instance, where events are collected, for the instance's
    function, which is called as ``apply(source, events)`` (it may be async) and follows the
    ``transform_events`` return contract. A ``build`` that declares a ``name`` parameter gets
    the instance's name too (``build(settings, name="bots")``), to name it in what it reports.

    Checks that need no more than the settings (a pattern compiles, a condition parses) belong
    in the settings Struct's ``__post_init__``, raising ``SettingsError``: they run when the
    workspace is checked, so a bad setting is refused with its path before it is applied.
    ``build`` may raise ``SettingsError`` too, for what only the collecting process can check
    (a file there); the process then stays on the version it runs.
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


class BannerSecret(msgspec.Struct, frozen=True, kw_only=True):
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
BannerValue = str | BannerSecret | CliCommand


class SinkError(Exception):
    """Raised by a sink when a batch could not be delivered and should be retried."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSinkError(SinkError):
    """Raised by a sink when retrying cannot help (bad credentials, a 400): dead-letter now."""


# --- the workspace (`docs/workspace.md`) ---------------------------------------------------------

# Top-level keys and source fields the core reads itself; plugins cannot register these names.
CORE_SECTIONS = frozenset({"version", "sources", "transforms", "destinations"})
CORE_SOURCE_FIELDS = frozenset({"description", "transforms", "destinations"})

# A setting that must be written as a `${ENV_NAME}` placeholder (never inline, so it is never
# stored or shown), and is resolved only in the process that uses it.
Secret = Annotated[
    str,
    msgspec.Meta(
        extra={"signalsmith": "secret"},
        extra_json_schema={
            "description": "A secret: write it as ${ENV_NAME}; it is resolved from the "
            "environment of the process that uses it.",
            "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*\}",
            "writeOnly": True,
        },
    ),
]

# An http(s) URL, or a string holding a `${ENV_NAME}` placeholder (checked again once resolved).
Url = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(https?://[^\s/?#]+[^\s]*|.*\$\{[A-Za-z_][A-Za-z0-9_]*\}.*)$",
        extra={"expected": "an http(s) URL"},
        extra_json_schema={"format": "uri"},
    ),
]


class DestinationType(msgspec.Struct, frozen=True, kw_only=True):
    """A kind of destination a plugin delivers to (``register_destination_types``).

    The workspace declares named instances of it under ``destinations:``; each instance becomes a
    ``Sink`` named after it (its own consumer group and dead letters), whose ``settings`` are
    checked against ``settings`` (a msgspec Struct type; None when the type takes none). The
    worker calls the registering plugin's ``deliver_events`` with each instance's batches.
    """

    name: str
    settings: type[msgspec.Struct] | None = None
    plugin: str = ""
    description: str = ""
    # The payload of each message type when the instance does not override it: a mapping-kit
    # mapping (`signalsmith.mapping`) by type (``"track"``, ``"identify"``, ...). A type left
    # out gets the whole event (``{"@path": "$."}``).
    mappings: dict[str, Any] = {}


class WorkspaceProblem(msgspec.Struct, frozen=True):
    """What a plugin's ``check`` finds wrong: the path it is at, from the document's root
    (``("sources", "web", "contract", "plan")``), and what is wrong, with the fix."""

    path: tuple[str | int, ...]
    message: str


class WorkspaceSection(msgspec.Struct, frozen=True, kw_only=True):
    """A part of the workspace document a plugin owns (``register_workspace_sections``).

    ``name`` is a top-level key (``contracts:``) whose value is checked against ``settings``;
    ``source_field`` a key each source may set (``sources.<name>.contract``), checked against
    ``source_settings``. Either may be left out. ``check(document)`` is called with the typed
    document once everything else in it is valid, for rules across parts (a source naming a plan
    that does not exist), and returns ``WorkspaceProblem``s. ``build(document)`` is called once
    per version in every process that loads it; what it returns is in every source's
    ``pipeline.sections[name]`` (compile schemas there, not per request). Placeholders are not
    resolved in sections: resolve them where they are used (``resolve_placeholders``).

    ``sink_consent(document)``, when set, returns the consent categories each sink a plugin
    registered (a warehouse) needs, by sink name: the worker adds them to that sink's
    ``Routing.consent`` for the version, as a workspace destination's ``routing.consent`` is
    (a plugin cannot edit another plugin's ``Sink``; the consent plugin sets them this way).
    """

    name: str
    settings: Any = None
    source_field: str | None = None
    source_settings: Any = None
    check: Callable[[WorkspaceDocument], Iterable[WorkspaceProblem]] | None = None
    build: Callable[[WorkspaceDocument], Any] | None = None
    sink_consent: Callable[[WorkspaceDocument], Mapping[str, tuple[str, ...]]] | None = None
    plugin: str = ""
    description: str = ""


class WorkspaceSource(msgspec.Struct, frozen=True, kw_only=True):
    """One source of a checked workspace document."""

    name: str
    description: str = ""
    transforms: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    # Plugin-owned source fields, by field name, each as its section's ``source_settings``.
    fields: dict[str, Any] = {}


class WorkspaceTransform(msgspec.Struct, frozen=True, kw_only=True):
    """A transform instance of a checked document: its type and its settings.

    ``settings`` is the type's Struct as written (placeholders unresolved); ``written`` is the
    settings mapping as written, which the core resolves and converts where the instance runs.
    """

    name: str
    type: str
    settings: Any = None
    written: dict[str, Any] = {}
    description: str = ""


class WorkspaceDestination(msgspec.Struct, frozen=True, kw_only=True):
    """A destination instance of a checked document: type, settings, routing and delivery."""

    name: str
    type: str
    settings: Any = None
    written: dict[str, Any] = {}
    description: str = ""
    routing: Routing = Routing()
    batch_size: int = 500
    max_wait_seconds: float = 1.0
    max_attempts: int | None = None
    retry_window_seconds: float | None = None
    # The instance's mappings as written (by message type, and triggered ones), and compiled
    # with its type's defaults (``signalsmith.mapping.EventMapping``).
    mapping: dict[str, Any] = {}
    mappings: tuple[dict[str, Any], ...] = ()
    event_mapping: Any = None


class WorkspaceDocument(msgspec.Struct, frozen=True, kw_only=True):
    """A workspace document that passed every check, typed (placeholders unresolved)."""

    version: int
    sources: dict[str, WorkspaceSource] = {}
    transforms: dict[str, WorkspaceTransform] = {}
    destinations: dict[str, WorkspaceDestination] = {}
    # Plugin-owned top-level sections, by name, each as its section's ``settings`` type.
    sections: dict[str, Any] = {}


class SourcePipeline(msgspec.Struct, frozen=True, kw_only=True):
    """A source as the workspace version a process runs resolves it (``Source.pipeline``).

    Every field comes from one version, so a request sees one version from start to end.
    Transform instances are built where events are collected (collectors, the embedded serve);
    in a worker or a CLI command ``transforms`` is empty.
    """

    version: int
    transforms: tuple[Transform, ...] = ()
    destinations: tuple[str, ...] = ()
    fields: dict[str, Any] = {}
    sections: dict[str, Any] = {}


# --- event contracts (`plugins/contracts`) -------------------------------------------------------
#
# A contract stage writes one ``ViolationRecord`` per event it finds fault with to a capped Redis
# stream, ``runtime.key(VIOLATIONS_STREAM)``, in the entry field ``VIOLATION_RECORD_FIELD``
# (msgpack). Blocked events live only there, so anything that keeps violations (the warehouse's
# ``violations`` table) reads that stream: the record is the core's, so neither plugin imports
# the other.

VIOLATIONS_STREAM = "violations"
VIOLATION_RECORD_FIELD = "r"

ContractHandling = Literal["allowed", "omitted", "blocked"]


class Violation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One way an event breaks its tracking plan.

    ``type``, ``field`` and ``description`` are what Segment writes to
    ``context.protocols.violations`` (types ``Required``, ``Invalid Type``, ``Invalid Value``,
    ``Unplanned Event``; ``field`` is ``properties.price``, or ``(root)`` for the whole event).
    ``rule`` is the JSON Schema keyword that failed (``required``, ``type``, ``pattern``, ...,
    or ``unplanned_event``); ``expected`` and ``actual`` say what the plan wanted and what came.
    """

    type: str
    field: str
    description: str
    rule: str = ""
    expected: str = ""
    actual: str = ""


class ViolationRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An event a contract found fault with, and what was done with it (``handling``).

    ``event`` is the event as Segment JSON, as it arrived: for a blocked event, the only copy.
    """

    source_id: str
    message_id: str
    event_type: str
    event_name: str = ""
    received_at: datetime
    plan: str = ""
    event_version: int | None = None
    handling: ContractHandling
    violations: tuple[Violation, ...] = ()
    event: bytes = b""
