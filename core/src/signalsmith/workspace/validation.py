"""Checking a whole workspace document against what the installed plugins define.

Every problem is collected, each with its path and line (``destinations.crm.settings.url:
expected an http(s) URL, got "htp:/x" (line 14)``), and a document with any problem is refused
as a whole. Plugins type their parts: transform instances by their ``TransformType.settings``,
destination instances by their ``DestinationType.settings``, plugin sections and source fields
by their ``WorkspaceSection`` types. Sources, references between parts and the rest are the
core's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec

from signalsmith.fql import FqlError
from signalsmith.fql import parse as parse_condition
from signalsmith.hooks import Hooks
from signalsmith.mapping import MappingInvalid, build_event_mapping
from signalsmith.records import (
    CORE_SECTIONS,
    CORE_SOURCE_FIELDS,
    DestinationFilter,
    DestinationType,
    FilterAction,
    Routing,
    Sink,
    TransformType,
    WorkspaceDestination,
    WorkspaceDocument,
    WorkspaceProblem,
    WorkspaceSection,
    WorkspaceSource,
    WorkspaceTransform,
)
from signalsmith.workspace.checking import check_value
from signalsmith.workspace.text import (
    DocumentText,
    Path,
    ReadDocument,
    Unreadable,
    Where,
    describe,
    read_document,
    render_path,
)

FORMAT_VERSION = 1
# The write-key plugin's rule for source names, used for every name: names become parts of
# Redis keys (consumer groups, dead-letter streams), so no ":" and no spaces.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[
    str,
    msgspec.Meta(
        pattern=NAME_PATTERN,
        extra={"expected": "a name of 1-64 letters, digits, '.', '_' or '-'"},
    ),
]
MessageType = Literal["track", "identify", "page", "screen", "group", "alias"]


class WorkspaceError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One problem of a document: where it is and what is wrong, with the fix where it helps."""

    path: str
    message: str
    line: int | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.line is not None:
            where = (
                f" (line {self.line})" if self.file is None else f" ({self.file} line {self.line})"
            )
        return f"{self.path}: {self.message}{where}" if self.path else f"{self.message}{where}"


class WorkspaceInvalid(Exception):
    """A document refused, with every problem found in it."""

    def __init__(self, errors: list[WorkspaceError]) -> None:
        self.errors = errors
        count = len(errors)
        listed = "\n".join(f"  {error}" for error in errors)
        super().__init__(f"the workspace has {count} error{'s' if count != 1 else ''}:\n{listed}")


class Registry(msgspec.Struct, frozen=True, kw_only=True):
    """What a document may name in this process: the installed plugins' types and sections."""

    transform_types: dict[str, TransformType] = {}
    destination_types: dict[str, DestinationType] = {}
    sections: dict[str, WorkspaceSection] = {}
    # Sinks plugins register themselves (warehouses): their names are taken.
    registered_sinks: tuple[str, ...] = ()

    @classmethod
    def from_hooks(
        cls,
        hooks: Hooks,
        sinks: list[Sink] | None = None,
        transform_types: dict[str, TransformType] | None = None,
    ) -> Registry:
        return cls(
            transform_types=transform_types
            if transform_types is not None
            else hooks.transform_types(),
            destination_types=hooks.destination_types(),
            sections=hooks.workspace_sections(),
            registered_sinks=tuple(s.name for s in (sinks if sinks is not None else hooks.sinks())),
        )

    def source_fields(self) -> dict[str, WorkspaceSection]:
        return {s.source_field: s for s in self.sections.values() if s.source_field is not None}


# --- the core's parts, as written -------------------------------------------------------------


# Segment's action names, and the older ones its filters still answer to.
FILTER_ACTION_NAMES = {
    "DROP": "DROP",
    "DROP_PROPERTIES": "DROP_PROPERTIES",
    "ALLOW_PROPERTIES": "ALLOW_PROPERTIES",
    "SAMPLE": "SAMPLE",
    "drop_event": "DROP",
    "sample_event": "SAMPLE",
    "blocklist_fields": "DROP_PROPERTIES",
    "whitelist_fields": "ALLOW_PROPERTIES",
}
FilterActionName = Literal[
    "DROP",
    "DROP_PROPERTIES",
    "ALLOW_PROPERTIES",
    "SAMPLE",
    "drop_event",
    "sample_event",
    "blocklist_fields",
    "whitelist_fields",
]


class FilterActionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``DestinationFilterActionV1``: ``fields`` for the property actions, ``percent`` (and
    ``path``) for ``SAMPLE``."""

    type: FilterActionName
    fields: dict[str, list[str]] | None = None
    percent: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    path: str | None = None


class FilterSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A destination filter as Segment's Public API gives it (``DestinationFilterV1``); its
    ids and times are accepted and ignored, ``sourceId``/``source`` names a source here."""

    condition: str = msgspec.field(name="if")
    actions: list[FilterActionSpec]
    title: str = ""
    description: str = ""
    enabled: bool = True
    source: str | None = None
    source_id: str | None = msgspec.field(default=None, name="sourceId")
    id: str | None = None
    destination_id: str | None = msgspec.field(default=None, name="destinationId")
    created_at: str | None = msgspec.field(default=None, name="createdAt")
    updated_at: str | None = msgspec.field(default=None, name="updatedAt")


class RoutingSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    types: tuple[MessageType, ...] = ()
    deny_types: tuple[MessageType, ...] = ()
    events: tuple[str, ...] = ()
    deny_events: tuple[str, ...] = ()
    condition: str | None = msgspec.field(default=None, name="if")
    consent: tuple[str, ...] = ()
    filters: list[FilterSpec] = []


class TriggeredMappingSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A mapping for the events its FQL ``trigger`` matches (Segment's subscription)."""

    trigger: str
    mapping: Any
    name: str = ""


class DestinationSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: str
    settings: dict[str, Any] | None = None
    description: str = ""
    routing: RoutingSpec | None = None
    # Mappings by message type (overriding the type's defaults), and triggered mappings.
    mapping: dict[MessageType, Any] = {}
    mappings: list[TriggeredMappingSpec] = []
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500
    max_wait_seconds: Annotated[float, msgspec.Meta(ge=0, le=300)] = 1.0
    # None: no attempt limit, the retry window decides.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    retry_window_seconds: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] | None = None


class TransformSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: str
    settings: dict[str, Any] | None = None
    description: str = ""


class SourceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    description: str = ""
    transforms: list[Name] = []
    destinations: list[Name] = []


class _Checker:
    def __init__(self, read: ReadDocument, registry: Registry) -> None:
        self.read = read
        self.registry = registry
        self.errors: list[WorkspaceError] = []

    def report(self, path: Path, message: str) -> None:
        where = self.read.where(path)
        self.errors.append(
            WorkspaceError(
                path=render_path(path),
                message=message,
                line=where.line if where else None,
                file=where.file if where else None,
            )
        )

    def mapping(self, value: Any, path: Path, what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.report(path, f"expected a mapping of {what}, got {describe(value)}")
            return {}
        return value

    def names(self, section: dict[str, Any], path: Path, what: str) -> dict[str, Any]:
        good = {}
        for name, value in section.items():
            if check_value(name, Name, (*path, name), self._name_report, what=what) is not None:
                good[name] = value
        return good

    def _name_report(self, path: Path, message: str) -> None:
        self.report(path, f"{message} (a {path[0][:-1]} name)")

    # -- the parts --

    def document(self) -> WorkspaceDocument | None:
        value = self.read.value
        if value is None:
            self.report((), "the document is empty; it starts with `version: 1`")
            return None
        if not isinstance(value, dict):
            self.report((), f"expected a mapping at the top of the document, got {describe(value)}")
            return None
        version = value.get("version")
        if "version" not in value:
            self.report((), "missing `version: 1` (the format of the document)")
        elif version != FORMAT_VERSION or isinstance(version, bool):
            self.report(
                ("version",),
                f"this SignalSmith reads workspace format {FORMAT_VERSION}, got {describe(version)}",
            )
        sections = self.registry.sections
        for key in value:
            if key not in CORE_SECTIONS and key not in sections:
                self.report(
                    (key,),
                    f"no installed plugin defines a top-level section {key!r} (the core's: "
                    f"{', '.join(sorted(CORE_SECTIONS))}; plugins': "
                    f"{', '.join(sorted(sections)) or 'none'})",
                )
        transforms = self.transforms(value.get("transforms"))
        destinations = self.destinations(value.get("destinations"))
        sources = self.sources(value.get("sources"), transforms, destinations)
        self.filter_sources(destinations, sources)
        plugin_sections = {}
        for name, section in sections.items():
            if name in value and section.settings is not None:
                checked = check_value(
                    value[name],
                    section.settings,
                    (name,),
                    self.report,
                    what=f"section {name!r} (plugin {section.plugin!r})",
                )
                if checked is not None:
                    plugin_sections[name] = checked
            elif name in value:
                self.report((name,), f"section {name!r} (plugin {section.plugin!r}) takes no value")
        if self.errors:
            return None
        document = WorkspaceDocument(
            version=FORMAT_VERSION,
            sources=sources,
            transforms=transforms,
            destinations=destinations,
            sections=plugin_sections,
        )
        self.plugin_checks(document)
        return None if self.errors else document

    def transforms(self, written: Any) -> dict[str, WorkspaceTransform]:
        found: dict[str, WorkspaceTransform] = {}
        section = self.names(
            self.mapping(written, ("transforms",), "transform instances"),
            ("transforms",),
            "transform",
        )
        types = self.registry.transform_types
        for name, value in section.items():
            path: Path = ("transforms", name)
            spec = check_value(value, TransformSpec, path, self.report, what=f"transform {name!r}")
            if spec is None:
                continue
            kind = types.get(spec.type)
            if kind is None:
                self.report(
                    (*path, "type"),
                    f"no installed plugin registers a transform type {spec.type!r} "
                    f"(installed: {', '.join(sorted(types)) or 'none'})",
                )
                continue
            settings = self.settings(
                spec.settings, kind.settings, (*path, "settings"), f"transform type {kind.name!r}"
            )
            if settings is _INVALID:
                continue
            found[name] = WorkspaceTransform(
                name=name,
                type=kind.name,
                settings=settings,
                written=spec.settings or {},
                description=spec.description,
            )
        return found

    def destinations(self, written: Any) -> dict[str, WorkspaceDestination]:
        found: dict[str, WorkspaceDestination] = {}
        section = self.names(
            self.mapping(written, ("destinations",), "destination instances"),
            ("destinations",),
            "destination",
        )
        types = self.registry.destination_types
        for name, value in section.items():
            path: Path = ("destinations", name)
            if name in self.registry.registered_sinks:
                self.report(
                    path,
                    f"{name!r} is the name of a sink an installed plugin registers (its consumer "
                    "group and dead letters would be shared); choose another name",
                )
                continue
            spec = check_value(
                value, DestinationSpec, path, self.report, what=f"destination {name!r}"
            )
            if spec is None:
                continue
            kind = types.get(spec.type)
            if kind is None:
                self.report(
                    (*path, "type"),
                    f"no installed plugin registers a destination type {spec.type!r} "
                    f"(installed: {', '.join(sorted(types)) or 'none'})",
                )
                continue
            settings = self.settings(
                spec.settings, kind.settings, (*path, "settings"), f"destination type {kind.name!r}"
            )
            if settings is _INVALID:
                continue
            routing = self.routing(spec.routing or RoutingSpec(), (*path, "routing"))
            try:
                event_mapping = build_event_mapping(
                    kind.mappings,
                    spec.mapping,
                    [
                        (m.name or f"mapping {i + 1}", m.trigger, m.mapping)
                        for i, m in enumerate(spec.mappings)
                    ],
                )
            except MappingInvalid as invalid:
                for problem in invalid.problems:
                    self.report((*path, *problem.path), problem.message)
                continue
            if routing is None:
                continue
            found[name] = WorkspaceDestination(
                name=name,
                type=kind.name,
                settings=settings,
                written=spec.settings or {},
                description=spec.description,
                routing=routing,
                batch_size=spec.batch_size,
                max_wait_seconds=spec.max_wait_seconds,
                max_attempts=spec.max_attempts,
                retry_window_seconds=spec.retry_window_seconds,
                mapping=dict(spec.mapping),
                mappings=tuple(msgspec.to_builtins(m) for m in spec.mappings),
                event_mapping=event_mapping,
            )
        return found

    def routing(self, spec: RoutingSpec, path: Path) -> Routing | None:
        """The routing record of ``spec``, with every FQL condition parsed (None if any is
        wrong, each reported at its path)."""
        good = True
        if spec.condition is not None and not self.condition(spec.condition, (*path, "if")):
            good = False
        filters: list[DestinationFilter] = []
        for index, written in enumerate(spec.filters):
            where: Path = (*path, "filters", index)
            if not self.condition(written.condition, (*where, "if")):
                good = False
            actions = []
            for number, action in enumerate(written.actions):
                checked = self.filter_action(action, (*where, "actions", number))
                if checked is None:
                    good = False
                else:
                    actions.append(checked)
            if not written.actions:
                self.report((*where, "actions"), "a filter needs at least one action")
                good = False
            filters.append(
                DestinationFilter(
                    condition=written.condition,
                    actions=tuple(actions),
                    title=written.title,
                    source=written.source or written.source_id,
                    enabled=written.enabled,
                )
            )
        if not good:
            return None
        return Routing(
            types=spec.types,
            deny_types=spec.deny_types,
            events=spec.events,
            deny_events=spec.deny_events,
            condition=spec.condition,
            consent=spec.consent,
            filters=tuple(filters),
        )

    def filter_sources(
        self, destinations: dict[str, WorkspaceDestination], sources: dict[str, WorkspaceSource]
    ) -> None:
        for name, destination in destinations.items():
            for index, written in enumerate(destination.routing.filters):
                if written.source is not None and written.source not in sources:
                    self.report(
                        ("destinations", name, "routing", "filters", index, "source"),
                        f"source {written.source!r} is not declared (declared: "
                        f"{', '.join(sorted(sources)) or 'none'})",
                    )

    def condition(self, text: str, path: Path) -> bool:
        try:
            parse_condition(text)
        except FqlError as error:
            self.report(path, f"not a valid FQL condition: {error}")
            return False
        return True

    def filter_action(self, action: FilterActionSpec, path: Path) -> FilterAction | None:
        kind = FILTER_ACTION_NAMES[action.type]
        if kind == "SAMPLE":
            if action.percent is None:
                self.report(path, "a SAMPLE action needs `percent` (0-1): the share of events kept")
                return None
            if action.path is not None and not self.condition(action.path, (*path, "path")):
                return None
        elif action.percent is not None or action.path is not None:
            self.report(path, f"only SAMPLE takes `percent` and `path`, not {kind}")
            return None
        if kind in ("DROP_PROPERTIES", "ALLOW_PROPERTIES"):
            if not action.fields:
                self.report(
                    path,
                    f"{kind} needs `fields`: object paths and their keys, e.g. "
                    '{"properties": ["email"], "": ["userId"]}',
                )
                return None
        elif action.fields:
            self.report(path, f"{kind} takes no `fields`")
            return None
        return FilterAction(
            type=kind,  # type: ignore[arg-type]
            fields={key: tuple(keys) for key, keys in (action.fields or {}).items()},
            percent=action.percent,
            path=action.path,
        )

    def settings(self, written: dict[str, Any] | None, kind: Any, path: Path, what: str) -> Any:
        if kind is None:
            if written:
                self.report(path, f"{what} takes no settings")
                return _INVALID
            return None
        checked = check_value(written or {}, kind, path, self.report, what=what)
        return _INVALID if checked is None else checked

    def sources(
        self,
        written: Any,
        transforms: dict[str, WorkspaceTransform],
        destinations: dict[str, WorkspaceDestination],
    ) -> dict[str, WorkspaceSource]:
        found: dict[str, WorkspaceSource] = {}
        written_section = self.mapping(written, ("sources",), "sources")
        section = self.names(written_section, ("sources",), "source")
        declared = self.read.value if isinstance(self.read.value, dict) else {}
        written_transforms = (
            declared.get("transforms") if isinstance(declared.get("transforms"), dict) else {}
        )
        written_destinations = (
            declared.get("destinations") if isinstance(declared.get("destinations"), dict) else {}
        )
        plugin_fields = self.registry.source_fields()
        for name, value in section.items():
            path: Path = ("sources", name)
            value = self.mapping(value, path, "source fields")
            core = {key: item for key, item in value.items() if key in CORE_SOURCE_FIELDS}
            fields: dict[str, Any] = {}
            for key, item in value.items():
                if key in CORE_SOURCE_FIELDS:
                    continue
                owner = plugin_fields.get(key)
                if owner is None:
                    self.report(
                        (*path, key),
                        f"no installed plugin defines a source field {key!r} (the core's: "
                        f"{', '.join(sorted(CORE_SOURCE_FIELDS))}; plugins': "
                        f"{', '.join(sorted(plugin_fields)) or 'none'})",
                    )
                    continue
                if owner.source_settings is None:
                    fields[key] = item
                    continue
                checked = check_value(
                    item,
                    owner.source_settings,
                    (*path, key),
                    self.report,
                    what=f"source field {key!r} (plugin {owner.plugin!r})",
                )
                if checked is not None:
                    fields[key] = checked
            spec = check_value(core, SourceSpec, path, self.report, what=f"source {name!r}")
            if spec is None:
                continue
            self.references(
                spec.transforms, (*path, "transforms"), "transform", transforms, written_transforms
            )
            self.references(
                spec.destinations,
                (*path, "destinations"),
                "destination",
                destinations,
                written_destinations,
            )
            found[name] = WorkspaceSource(
                name=name,
                description=spec.description,
                transforms=tuple(spec.transforms),
                destinations=tuple(spec.destinations),
                fields=fields,
            )
        return found

    def references(
        self,
        names: list[str],
        path: Path,
        kind: str,
        declared: Mapping[str, Any],
        written: Mapping[str, Any],
    ) -> None:
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                self.report((*path, index), f"{kind} {name!r} is listed twice")
            seen.add(name)
            if name in declared or name in written:
                continue  # an instance with errors of its own is reported there
            hint = f"declare it under {kind}s:"
            if kind == "transform" and name in self.registry.transform_types:
                hint = (
                    f"declare an instance of type {name!r}: `{kind}s: {{{name}: {{type: {name}}}}}`"
                )
            if kind == "destination" and name in self.registry.registered_sinks:
                hint = (
                    f"{name!r} is a sink a plugin registers; it receives every source's events "
                    "without being listed"
                )
            known = ", ".join(sorted({*declared, *written})) or "none"
            self.report(
                (*path, index), f"{kind} {name!r} is not declared (declared: {known}); {hint}"
            )

    def plugin_checks(self, document: WorkspaceDocument) -> None:
        for section in self.registry.sections.values():
            if section.check is None:
                continue
            try:
                problems = list(section.check(document) or ())
            except Exception as error:
                self.report(
                    (section.name,),
                    f"plugin {section.plugin!r} failed checking the document: "
                    f"{type(error).__name__}: {error}",
                )
                continue
            for problem in problems:
                if isinstance(problem, WorkspaceProblem):
                    self.report(tuple(problem.path), problem.message)


_INVALID: Any = object()


def check_document(read: ReadDocument, registry: Registry) -> WorkspaceDocument:
    """The typed document, or ``WorkspaceInvalid`` with every problem in it."""
    checker = _Checker(read, registry)
    document = checker.document()
    if document is None:
        raise WorkspaceInvalid(checker.errors or [WorkspaceError(path="", message="invalid")])
    return document


def load_document(
    document: DocumentText,
    registry: Registry,
    *,
    read_file: Callable[[str], str] | None = None,
) -> tuple[WorkspaceDocument, ReadDocument]:
    """Read and check ``document``: the typed document and what was read (with included files).

    Raises ``WorkspaceInvalid`` with every error, an unreadable text's included.
    """
    try:
        read = read_document(document, read_file=read_file)
    except Unreadable as unreadable:
        raise WorkspaceInvalid(
            [
                WorkspaceError(
                    path=render_path(error.path),
                    message=error.message,
                    line=error.where.line if error.where else None,
                    file=error.where.file if error.where else None,
                )
                for error in unreadable.errors
            ]
        ) from None
    return check_document(read, registry), read


__all__ = [
    "FORMAT_VERSION",
    "NAME_PATTERN",
    "Registry",
    "Where",
    "WorkspaceError",
    "WorkspaceInvalid",
    "check_document",
    "load_document",
]
