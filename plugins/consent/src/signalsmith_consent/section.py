"""The plugin's part of the workspace: ``consent:`` and ``sources.<name>.consent``.

``check`` runs when a document is applied: a destination's ``routing.consent``, or a sink under
``consent.sinks``, naming a category the section does not declare is refused at its path, and
so is a strict source the document does not list. ``build`` runs once per version in every
process and resolves, per source, the sinks it feeds and the categories each needs, so a
request only reads them. ``sink_consent`` hands the core the categories of plugin-registered
sinks (the warehouse), which the worker adds to their routing.

A document without a ``consent:`` section declares no categories: nothing is checked, events
are still judged by their own preferences (and remembered ones), with the section's defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from signalsmith import WorkspaceDocument, WorkspaceProblem, WorkspaceSection
from signalsmith_consent.settings import ConsentSection, SourceConsent

SECTION = "consent"
SOURCE_FIELD = "consent"

DAY_SECONDS = 86_400


class BuiltConsent:
    """One workspace version's consent settings, resolved for the request path."""

    __slots__ = ("categories", "declared", "destinations", "remember", "sinks", "strict", "ttl")

    def __init__(
        self,
        section: ConsentSection,
        *,
        declared: bool,
        strict: frozenset[str] = frozenset(),
        destinations: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] | None = None,
    ) -> None:
        self.categories = section.categories
        # Whether the document wrote a `consent:` section (else its defaults apply, unchecked).
        self.declared = declared
        self.strict = strict
        # The workspace destinations each source feeds, with the categories each needs.
        self.destinations = destinations or {}
        # The categories plugin-registered sinks need, by sink name.
        self.sinks = dict(section.sinks)
        self.remember = section.remember
        self.ttl = max(1, round(section.remember_days * DAY_SECONDS))


DEFAULT = BuiltConsent(ConsentSection(), declared=False)


def _section(document: WorkspaceDocument) -> tuple[ConsentSection, bool]:
    written = document.sections.get(SECTION)
    if isinstance(written, ConsentSection):
        return written, True
    return ConsentSection(), False


def _strict_sources(document: WorkspaceDocument, section: ConsentSection) -> frozenset[str]:
    strict = set(section.strict_sources)
    for name, source in document.sources.items():
        field = source.fields.get(SOURCE_FIELD)
        if isinstance(field, SourceConsent) and field.strict:
            strict.add(name)
    return frozenset(strict)


def _named_categories(
    document: WorkspaceDocument, section: ConsentSection
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every category the document names outside ``consent.categories``, with its path."""
    for name, destination in document.destinations.items():
        for index, category in enumerate(destination.routing.consent):
            yield ("destinations", name, "routing", "consent", index), category
    for sink, categories in section.sinks.items():
        for index, category in enumerate(categories):
            yield (SECTION, "sinks", sink, index), category


def check(document: WorkspaceDocument) -> list[WorkspaceProblem]:
    section, declared = _section(document)
    if not declared:
        return []
    problems: list[WorkspaceProblem] = []
    known = set(section.categories)
    listed = ", ".join(section.categories) or "none"
    by_folded = {category.casefold(): category for category in section.categories}
    for path, category in _named_categories(document, section):
        if category in known:
            continue
        near = by_folded.get(category.casefold())
        hint = (
            f"; categories match as written, case included: did you mean {near!r}?"
            if near is not None
            else f"; declare it under `{SECTION}.categories`"
        )
        problems.append(
            WorkspaceProblem(
                path, f"consent category {category!r} is not declared (declared: {listed}){hint}"
            )
        )
    for index, source in enumerate(section.strict_sources):
        if source not in document.sources:
            problems.append(
                WorkspaceProblem(
                    (SECTION, "strict_sources", index),
                    f"source {source!r} is not in this document (sources: "
                    f"{', '.join(sorted(document.sources)) or 'none'})",
                )
            )
    return problems


def build(document: WorkspaceDocument) -> BuiltConsent:
    section, declared = _section(document)
    destinations = {
        name: tuple(
            (destination, document.destinations[destination].routing.consent)
            for destination in source.destinations
            if destination in document.destinations
        )
        for name, source in document.sources.items()
    }
    return BuiltConsent(
        section,
        declared=declared,
        strict=_strict_sources(document, section),
        destinations=destinations,
    )


def sink_consent(document: WorkspaceDocument) -> dict[str, tuple[str, ...]]:
    section, _ = _section(document)
    return {sink: tuple(categories) for sink, categories in section.sinks.items() if categories}


def workspace_section() -> WorkspaceSection:
    return WorkspaceSection(
        name=SECTION,
        settings=ConsentSection,
        source_field=SOURCE_FIELD,
        source_settings=SourceConsent,
        check=check,
        build=build,
        sink_consent=sink_consent,
        description="Consent categories, strict sources, the categories of plugin-registered "
        "sinks, and how long each user's preferences are remembered (see plugins/consent).",
    )


def built_for(pipeline_sections: dict[str, Any] | None) -> BuiltConsent:
    built = (pipeline_sections or {}).get(SECTION)
    return built if isinstance(built, BuiltConsent) else DEFAULT
