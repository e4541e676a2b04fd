"""The ``webhook`` destination type: events sent as JSON to a URL, one request per event or in
batches (a JSON array, as Segment's Webhooks (Actions) batches), each body signed with
HMAC-SHA256 when a secret is set.

Every instance has its own pooled HTTP client and rate (``signalsmith.DestinationInstances``);
answers are classified the core's way (``signalsmith.HttpDestination``): 2xx delivered; 408,
423, 429 and 5xx but 501 retried (``Retry-After`` honoured); other 4xx dead-lettered with the
answer's body. A batch refused as a whole with 400, 413 or 422 is split until the refused
events are found; a batch answered ``207 Multi-Status`` settles each event by its own status.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from signalsmith import (
    UNDEFINED,
    DeliveryReport,
    DestinationInstances,
    DestinationType,
    Event,
    EventMapping,
    HttpAnswer,
    HttpDestination,
    HttpSettings,
    Prepared,
    RequestPlan,
    Runtime,
    Secret,
    Settlement,
    Sink,
    Url,
    __version__,
    chunked,
    hookimpl,
    to_segment_dict,
)

PLUGIN = "dest-webhook"
TYPE = "webhook"
USER_AGENT = f"SignalSmith/{__version__} (webhook)"
MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")

HeaderName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", extra={"expected": "an HTTP header name"}
    ),
]
HeaderValue = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[\t\x20-\x7e]*$",
        extra={"expected": "printable ASCII without line breaks (an HTTP header value)"},
    ),
]


class WebhookSettings(HttpSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A webhook instance's settings (README.md lists them with their defaults)."""

    url: Url
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    # Sent with every request; values may hold ${ENV_NAME} placeholders ("Bearer ${TOKEN}").
    headers: dict[HeaderName, HeaderValue] = {}
    # The HMAC-SHA256 key of the signature header; unset: no signature.
    secret: Secret | None = None
    signature_header: HeaderName = "X-Signature-256"
    # One request per event (false), or batches sent as a JSON array (true).
    batch: bool = False
    max_events_per_request: Annotated[int, msgspec.Meta(ge=1, le=4000)] = 1000
    max_bytes_per_request: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1_000_000


# Every message type's payload is the whole event, as Segment spells it (Segment's default `data`).
DEFAULT_MAPPINGS: dict[str, Any] = {kind: {"@path": "$."} for kind in MESSAGE_TYPES}


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of the exact body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode_payload(mapping: EventMapping | None, event: Event) -> bytes | None:
    """The event's payload as JSON (None when its mapping resolved to nothing)."""
    chosen = mapping.mapping_for(event) if mapping is not None else None
    if chosen is None or chosen.whole_event:
        # An event's own encoding is Segment's spelling, unless it carries extra keys.
        return msgspec.json.encode(to_segment_dict(event) if event.extra else event)
    payload = chosen(to_segment_dict(event))
    return None if payload is UNDEFINED else msgspec.json.encode(payload)


def prepare(destination: Sink, events: list[Event], settlement: Settlement) -> list[Prepared]:
    """Each event's payload, encoded once; events that cannot be sent are refused here."""
    settings: WebhookSettings = destination.settings
    limit = settings.max_bytes_per_request
    prepared = []
    for event in events:
        try:
            body = encode_payload(destination.mapping, event)
        except Exception as error:  # a mapping never raises for missing fields; this is a bug
            settlement.refuse([event], f"the mapping failed: {type(error).__name__}: {error}")
            continue
        if body is None:
            settlement.refuse([event], "the mapping made no payload from this event")
        elif len(body) + 2 > limit:
            settlement.refuse(
                [event], f"the payload is {len(body)} bytes, over max_bytes_per_request ({limit})"
            )
        else:
            prepared.append(Prepared(event, body))
    return prepared


def request_planner(settings: WebhookSettings) -> Callable[[list[Prepared]], RequestPlan]:
    base = {"content-type": "application/json", **settings.headers}

    def plan(chunk: list[Prepared]) -> RequestPlan:
        if settings.batch:
            body = b"[" + b",".join(item.body for item in chunk) + b"]"
            headers = dict(base)
        else:
            [item] = chunk
            body = item.body
            # The receiver can drop a retried delivery it already has.
            headers = {**base, "idempotency-key": item.event.message_id}
        if settings.secret:
            headers[settings.signature_header] = signature(settings.secret, body)
        return RequestPlan(settings.method, settings.url, body, headers)

    return plan


def multi_status(answer: HttpAnswer, chunk: list[Prepared]) -> dict[int, tuple[int, str]]:
    """A ``207 Multi-Status`` answer to a batch: a JSON list with one result per event, in
    order (``{"status": 400, "error": "..."}``), bare or as ``{"results": [...]}``."""
    if answer.status != 207:
        return {}
    try:
        body = msgspec.json.decode(answer.body)
    except msgspec.DecodeError:
        return {}
    results = body.get("results") if isinstance(body, dict) else body
    if not isinstance(results, list):
        return {}
    found: dict[int, tuple[int, str]] = {}
    for index, result in enumerate(results[: len(chunk)]):
        if not isinstance(result, dict) or not isinstance(result.get("status"), int):
            continue
        status = result["status"]
        message = next(
            (
                str(result[key])
                for key in ("error", "errormessage", "message")
                if result.get(key) is not None
            ),
            "",
        )
        detail = f": {message}" if message else ""
        found[index] = (status, f"HTTP {status} for this event from {answer.where}{detail}")
    return found


# --- hooks ------------------------------------------------------------------------------------


@hookimpl
def register_destination_types(register: Callable[[DestinationType], None]) -> None:
    register(
        DestinationType(
            name=TYPE,
            settings=WebhookSettings,
            description="POST events as JSON to a URL, one by one or in batches, signed",
            mappings=DEFAULT_MAPPINGS,
        )
    )


def _open(sink: Sink) -> HttpDestination:
    return HttpDestination(sink.settings, name=sink.name, user_agent=USER_AGENT)


async def _close(destination: HttpDestination) -> None:
    await destination.aclose()


@hookimpl
def startup(runtime: Runtime) -> None:
    if runtime.delivers:
        runtime.state[PLUGIN] = DestinationInstances(runtime, _open, _close)


@hookimpl
async def shutdown(runtime: Runtime) -> None:
    instances = runtime.state.pop(PLUGIN, None)
    if isinstance(instances, DestinationInstances):
        await instances.aclose()


@hookimpl
async def deliver_events(
    destination: Sink, events: list[Event], runtime: Runtime
) -> DeliveryReport | None:
    settings: WebhookSettings = destination.settings
    instances = runtime.attached(PLUGIN, DestinationInstances)
    settlement = Settlement()
    prepared = prepare(destination, events, settlement)
    if settings.batch:
        chunks = chunked(
            prepared,
            max_events=settings.max_events_per_request,
            max_bytes=settings.max_bytes_per_request,
        )
    else:
        chunks = [[item] for item in prepared]
    async with instances.use(destination) as http:
        return await http.deliver(
            chunks,
            request_planner(settings),
            per_event=multi_status if settings.batch else None,
            settlement=settlement,
        )
