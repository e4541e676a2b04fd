"""A plugin module for workspace tests: two transform types and an HTTP destination type.

Load it with ``SIGNALSMITH_PLUGIN_MODULES=signalsmith.testing.workspace_types`` (real processes)
or register the module in a test's plugin manager. What each instance does is visible from the
outside: ``tag`` sets a property on track events (seen where they are delivered), ``drop-event``
drops track events by name (listed in the collector's answer), and ``http-post`` posts each batch
as JSON to its ``url`` with its ``token`` as a Bearer token (a ``Secret``).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import msgspec

from signalsmith import (
    DestinationType,
    Drop,
    Event,
    PermanentSinkError,
    Secret,
    Sink,
    SinkError,
    StageResult,
    Track,
    TransformType,
    Url,
    hookimpl,
    to_segment_dict,
)


class TagSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    property: str
    value: str = "tagged"


class DropSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    event: str


class HttpPostSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: Url
    token: Secret | None = None
    timeout_seconds: float = 5.0


def build_tag(settings: TagSettings):  # type: ignore[no-untyped-def]
    def apply(source, events: list[Event]) -> StageResult:  # type: ignore[no-untyped-def]
        return StageResult(
            events=[
                msgspec.structs.replace(
                    event, properties={**event.properties, settings.property: settings.value}
                )
                if isinstance(event, Track)
                else event
                for event in events
            ]
        )

    return apply


def build_drop(settings: DropSettings):  # type: ignore[no-untyped-def]
    def apply(source, events: list[Event]) -> StageResult:  # type: ignore[no-untyped-def]
        kept, dropped = [], []
        for event in events:
            if isinstance(event, Track) and event.event == settings.event:
                dropped.append(Drop(event=event, reason="dropped_by_test"))
            else:
                kept.append(event)
        return StageResult(events=kept, dropped=dropped)

    return apply


@hookimpl
def register_transforms(register: Callable[[TransformType], None]) -> None:
    register(TransformType(name="tag", settings=TagSettings, build=build_tag))
    register(TransformType(name="drop-event", settings=DropSettings, build=build_drop))


@hookimpl
def register_destination_types(register: Callable[[DestinationType], None]) -> None:
    register(
        DestinationType(
            name="http-post",
            settings=HttpPostSettings,
            description="POST each batch as JSON to a URL (tests)",
        )
    )


@hookimpl
async def deliver_events(destination: Sink, events: list[Event]) -> None:
    settings: HttpPostSettings = destination.settings
    headers = {"X-Destination": destination.name}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    body = {"batch": [to_segment_dict(event) for event in events]}
    try:
        async with httpx.AsyncClient(timeout=settings.timeout_seconds) as client:
            response = await client.post(settings.url, json=body, headers=headers)
    except httpx.HTTPError as error:
        raise SinkError(f"{destination.name}: {type(error).__name__}") from None
    if response.status_code >= 500:
        raise SinkError(f"{destination.name}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise PermanentSinkError(f"{destination.name}: HTTP {response.status_code}")
