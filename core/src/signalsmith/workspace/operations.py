"""Applying, previewing and rolling back documents: what `config` and the admin API do."""

from __future__ import annotations

from pathlib import Path as FilePath

import msgspec

from signalsmith.records import WorkspaceDocument
from signalsmith.workspace.diff import Change, diff_documents
from signalsmith.workspace.store import StoredVersion, WorkspaceStore, digest_of
from signalsmith.workspace.text import DocumentText, format_of, read_document
from signalsmith.workspace.validation import Registry, check_document, load_document


class ApplyResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an apply did: the version now current, whether it is new, and what changed."""

    version: int
    applied: bool
    changes: list[Change] = []


class NoSuchVersion(LookupError):
    pass


def read_local(path: str | FilePath) -> tuple[DocumentText, FilePath]:
    """A document file as written, and the directory its ``$include``s are read from."""
    file = FilePath(path)
    text = file.read_text(encoding="utf-8")
    return DocumentText(text=text, format=format_of(file.name, text)), file.resolve().parent


def file_reader(directory: FilePath):  # type: ignore[no-untyped-def]
    def read(relative: str) -> str:
        return (directory / relative).read_text(encoding="utf-8")

    return read


def _checked(
    document: DocumentText, registry: Registry, directory: FilePath | None
) -> tuple[WorkspaceDocument, DocumentText]:
    """The typed document and the document with every included file's text (or raise)."""
    typed, read = load_document(
        document, registry, read_file=file_reader(directory) if directory is not None else None
    )
    return typed, DocumentText(text=document.text, files=read.files, format=document.format)


def stored_document(stored: StoredVersion, registry: Registry) -> WorkspaceDocument:
    """A stored version checked against ``registry`` (``WorkspaceInvalid`` if it no longer fits
    the installed plugins)."""
    return check_document(read_document(stored.document), registry)


async def preview(
    store: WorkspaceStore,
    registry: Registry,
    document: DocumentText,
    *,
    directory: FilePath | None = None,
) -> tuple[list[Change], int]:
    """What applying ``document`` would change, and the version it would be based on."""
    typed, _ = _checked(document, registry, directory)
    current = await store.current()
    before = _current_document(current, registry)
    return diff_documents(before, typed), current.version if current else 0


def _current_document(
    current: StoredVersion | None, registry: Registry
) -> WorkspaceDocument | None:
    if current is None:
        return None
    try:
        return stored_document(current, registry)
    except Exception:
        # The current version no longer fits these plugins: diff against nothing.
        return None


async def apply(
    store: WorkspaceStore,
    registry: Registry,
    document: DocumentText,
    *,
    applied_by: str,
    comment: str = "",
    base_version: int | None = None,
    directory: FilePath | None = None,
    rollback_of: int | None = None,
) -> ApplyResult:
    """Check ``document`` whole, and store it as the next version.

    ``base_version`` is the version the change was made from (default: the current one now);
    when another version was applied since, ``StaleBase`` is raised and nothing is stored. A
    document equal to the current version's stores nothing. ``WorkspaceInvalid`` lists every
    error of an invalid document.
    """
    typed, complete = _checked(document, registry, directory)
    current = await store.current()
    current_number = current.version if current else 0
    base = current_number if base_version is None else base_version
    if current is not None and base == current_number and current.digest == digest_of(complete):
        return ApplyResult(version=current_number, applied=False)
    changes = diff_documents(_current_document(current, registry), typed)
    stored = await store.store(
        complete,
        base_version=base,
        destinations=sorted(typed.destinations),
        applied_by=applied_by,
        comment=comment,
        rollback_of=rollback_of,
    )
    return ApplyResult(version=stored.version, applied=True, changes=changes)


async def rollback(
    store: WorkspaceStore,
    registry: Registry,
    version: int,
    *,
    applied_by: str,
    base_version: int | None = None,
    comment: str = "",
) -> ApplyResult:
    """Store a new version equal to ``version`` (checked again against the installed plugins)."""
    old = await store.get(version)
    if old is None:
        raise NoSuchVersion(
            f"there is no workspace version {version}; list them with `signalsmith config history`"
        )
    return await apply(
        store,
        registry,
        old.document,
        applied_by=applied_by,
        comment=comment or f"rollback to version {version}",
        base_version=base_version,
        rollback_of=version,
    )
