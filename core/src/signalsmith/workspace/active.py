"""One workspace version as a process runs it: built transform instances, destination sinks,
plugin sections, and each source's resolved pipeline.

What is built depends on what the process does, so a secret is resolved only where it is used:
transform instances where events are collected (collectors, the embedded serve), destination
settings where they are delivered (workers, the embedded serve). Everything is built before the
process switches to the version; a failure leaves the process on the version it ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from signalsmith.records import (
    Routing,
    SettingsError,
    Sink,
    SourcePipeline,
    Transform,
    WorkspaceDocument,
)
from signalsmith.transforms import build_instance, settings_error_text
from signalsmith.workspace.placeholders import MissingVariable, resolve_placeholders
from signalsmith.workspace.store import StoredVersion
from signalsmith.workspace.validation import Registry


class BuildFailed(Exception):
    """A version this process cannot run; the message names the component and what is wrong."""


class ActiveWorkspace:
    """A built version. Immutable once built: a process swaps the whole object."""

    __slots__ = (
        "destinations",
        "document",
        "pipelines",
        "sections",
        "sink_consent",
        "stored",
        "stream_position",
        "transforms",
    )

    def __init__(
        self,
        stored: StoredVersion,
        document: WorkspaceDocument,
        pipelines: dict[str, SourcePipeline],
        transforms: dict[str, Transform],
        destinations: list[Sink],
        sections: dict[str, Any],
        sink_consent: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.stored = stored
        self.document = document
        self.pipelines = pipelines
        self.transforms = transforms
        self.destinations = destinations
        self.sections = sections
        # The consent categories plugin-registered sinks need in this version, by sink name
        # (``WorkspaceSection.sink_consent``); the worker adds them to those sinks' routing.
        self.sink_consent = sink_consent or {}
        # The event stream's id when this version was applied (set by the follower).
        self.stream_position = "0"

    @property
    def version(self) -> int:
        return self.stored.version


def _resolved(
    written: dict[str, Any], kind: Any, where: str, environ: Mapping[str, str] | None
) -> Any:
    """Settings with placeholders resolved, converted to ``kind``; errors carry no value."""
    try:
        resolved = resolve_placeholders(written, environ)
    except MissingVariable as error:
        raise BuildFailed(f"{where}: {error}") from None
    if kind is None:
        return None
    try:
        return msgspec.convert(resolved, kind, strict=True)
    except (msgspec.ValidationError, ValueError, TypeError) as error:
        # msgspec's messages name the type and the path, never the value: safe to show.
        raise BuildFailed(f"{where} (once placeholders are resolved): {error}") from None


def build_active(
    stored: StoredVersion,
    document: WorkspaceDocument,
    registry: Registry,
    *,
    collects: bool,
    delivers: bool,
    environ: Mapping[str, str] | None = None,
) -> ActiveWorkspace:
    """Build ``document`` (version ``stored``) for a process that ``collects`` and/or
    ``delivers`` events. Raises ``BuildFailed`` naming the component."""
    sections: dict[str, Any] = {}
    for name, section in registry.sections.items():
        if section.build is None:
            continue
        try:
            sections[name] = section.build(document)
        except Exception as error:
            raise BuildFailed(
                f"{name}: plugin {section.plugin!r} could not build the section: "
                f"{type(error).__name__}: {error}"
            ) from error

    sink_consent: dict[str, tuple[str, ...]] = {}
    for name, section in registry.sections.items():
        if section.sink_consent is None:
            continue
        try:
            needed = section.sink_consent(document)
        except Exception as error:
            raise BuildFailed(
                f"{name}: plugin {section.plugin!r} could not say what its sinks need: "
                f"{type(error).__name__}: {error}"
            ) from error
        for sink, categories in needed.items():
            merged = (*sink_consent.get(sink, ()), *categories)
            sink_consent[sink] = tuple(dict.fromkeys(merged))

    transforms: dict[str, Transform] = {}
    if collects:
        for name, instance in document.transforms.items():
            kind = registry.transform_types[instance.type]
            settings = _resolved(
                instance.written, kind.settings, f"transforms.{name}.settings", environ
            )
            try:
                apply = build_instance(kind, settings, name)
            except SettingsError as error:
                # The plugin's own words about a setting (no value of a secret in them).
                raise BuildFailed(
                    settings_error_text(f"transforms.{name}.settings", error)
                ) from error
            except Exception as error:
                raise BuildFailed(
                    f"transforms.{name}: plugin {kind.plugin!r} could not build a "
                    f"{kind.name!r} transform: {type(error).__name__}"
                ) from error
            transforms[name] = Transform(name=name, type=kind.name, apply=apply, plugin=kind.plugin)

    listed_by: dict[str, list[str]] = {name: [] for name in document.destinations}
    for source in document.sources.values():
        for name in source.destinations:
            listed_by[name].append(source.name)
    destinations: list[Sink] = []
    for name, instance in document.destinations.items():
        kind = registry.destination_types[instance.type]
        settings = (
            _resolved(instance.written, kind.settings, f"destinations.{name}.settings", environ)
            if delivers
            else None
        )
        destinations.append(
            Sink(
                name=name,
                kind="destination",
                plugin=kind.plugin,
                type=kind.name,
                settings=settings,
                batch_size=instance.batch_size,
                max_wait_seconds=instance.max_wait_seconds,
                max_attempts=instance.max_attempts,
                retry_window_seconds=instance.retry_window_seconds,
                routing=msgspec.structs.replace(
                    instance.routing, sources=frozenset(listed_by[name])
                ),
                # Compiled once per version, when the document was checked.
                mapping=instance.event_mapping,
            )
        )

    pipelines = {
        name: SourcePipeline(
            version=stored.version,
            transforms=tuple(transforms[t] for t in source.transforms) if collects else (),
            destinations=source.destinations,
            fields=source.fields,
            sections=sections,
        )
        for name, source in document.sources.items()
    }
    return ActiveWorkspace(
        stored, document, pipelines, transforms, destinations, sections, sink_consent
    )


__all__ = ["ActiveWorkspace", "BuildFailed", "Routing", "build_active"]
