"""Testing transform plugins: check a workspace document against them, build its transform
chains as a collector would, and run a chain on a batch of wire-format messages.

    errors = workspace_errors(DOCUMENT, plugin)            # [] when valid, else the messages
    chains = build_chains(DOCUMENT, plugin)                 # source name -> its transforms
    result = await run_chain(chains["web"], [track(...)])   # events, dropped, outcomes

``run_chain`` calls each transform as the collector's pipeline does (``apply(source, events)``,
awaited when it returns an awaitable, each on the previous one's output), so a plugin's tests
see exactly what the collector would hand on; the whole collector is
``signalsmith.testing.collector_client``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from signalsmith.hooks import Hooks, resolve
from signalsmith.model import Event
from signalsmith.records import Drop, Outcome, Source, StageResult, Transform
from signalsmith.testing.harness import PluginSpec, plugin_manager
from signalsmith.workspace import DocumentText, Registry, WorkspaceInvalid
from signalsmith.workspace.active import build_active
from signalsmith.workspace.store import StoredVersion
from signalsmith.workspace.validation import load_document


def registry_of(*plugins: PluginSpec) -> Registry:
    return Registry.from_hooks(Hooks(plugin_manager(*plugins)))


def workspace_errors(text: str, *plugins: PluginSpec) -> list[str]:
    """Every error the workspace check finds in ``text`` (dedented), as the CLI prints them."""
    try:
        load_document(DocumentText(text=textwrap.dedent(text)), registry_of(*plugins))
    except WorkspaceInvalid as invalid:
        return [str(error) for error in invalid.errors]
    return []


def build_chains(
    text: str, *plugins: PluginSpec, environ: Mapping[str, str] | None = None
) -> dict[str, tuple[Transform, ...]]:
    """Each source's transform chain, built as a collector builds a version (placeholders
    resolved from ``environ``); ``WorkspaceInvalid`` or ``BuildFailed`` as a collector would."""
    registry = registry_of(*plugins)
    document, _ = load_document(DocumentText(text=textwrap.dedent(text)), registry)
    stored = StoredVersion(
        version=1,
        applied_at=datetime.now(UTC),
        applied_by="test",
        base_version=0,
        digest="",
        text="",
    )
    active = build_active(
        stored, document, registry, collects=True, delivers=False, environ=environ or {}
    )
    return {name: pipeline.transforms for name, pipeline in active.pipelines.items()}


def events_of(messages: Sequence[dict[str, Any]], source_id: str = "web") -> list[Event]:
    """Wire-format messages (``signalsmith.testing.track(...)``) as normalised events."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    events = []
    for message in messages:
        body = {"receivedAt": now, "timestamp": now, "projectId": source_id, **message}
        body.pop("sentAt", None)
        events.append(msgspec.convert(body, Event))  # type: ignore[arg-type]
    return events


class ChainResult(msgspec.Struct, kw_only=True):
    """What a chain made of a batch: the events it hands on, what it dropped and why (each
    with the instance that dropped it), and every outcome it reported."""

    events: list[Event]
    dropped: list[tuple[str, Drop]] = []
    outcomes: list[Outcome] = []

    def by_message_id(self) -> dict[str, Event]:
        return {event.message_id: event for event in self.events}


async def run_chain(
    chain: Sequence[Transform],
    messages: Sequence[dict[str, Any]] | Sequence[Event],
    source: Source | None = None,
) -> ChainResult:
    """Run ``chain`` on ``messages`` (wire dicts or events) as the collector's pipeline does."""
    source = source or Source(id="web", name="web")
    events: list[Event] = (
        list(messages)  # type: ignore[arg-type]
        if messages and not isinstance(messages[0], dict)
        else events_of(messages, source.id)  # type: ignore[arg-type]
    )
    result = ChainResult(events=events)
    for transform in chain:
        if not result.events:
            break
        stage: StageResult | None = await resolve(transform.apply(source, result.events))
        if stage is None:
            continue
        result.dropped.extend((transform.name, drop) for drop in stage.dropped)
        result.outcomes.extend(stage.outcomes)
        result.events = stage.events
    return result


__all__ = [
    "ChainResult",
    "build_chains",
    "events_of",
    "registry_of",
    "run_chain",
    "workspace_errors",
]
