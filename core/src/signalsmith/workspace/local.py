"""``signalsmith serve`` on the embedded defaults applies ``./signalsmith.yaml`` when there is one.

So the first command of the README still needs no setup, and a developer's workspace file is in
force as soon as the server starts. The document is checked and built here first, with this
process's environment (the one the embedded collector and worker inherit), so a missing secret
stops ``serve`` with the component's name instead of a collector that cannot start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from signalsmith.records import Credentials
from signalsmith.workspace.active import build_active
from signalsmith.workspace.operations import apply, file_reader, read_local
from signalsmith.workspace.store import StoredVersion, who
from signalsmith.workspace.validation import load_document

if TYPE_CHECKING:
    from signalsmith.runtime import Runtime

WORKSPACE_FILE = "signalsmith.yaml"


async def apply_local_workspace(runtime: Runtime, path: Path) -> list[str]:
    """Apply ``path`` if it differs from the current version; lines for the start banner.

    Raises ``WorkspaceInvalid`` or ``BuildFailed`` when it cannot run here (nothing applied).
    """
    workspace = runtime.workspace
    document, directory = read_local(path)
    typed, _ = load_document(document, workspace.registry, read_file=file_reader(directory))
    probe = StoredVersion(
        version=0,
        applied_at=datetime.now(UTC),
        applied_by="",
        base_version=0,
        digest="",
        text="",
    )
    build_active(probe, typed, workspace.registry, collects=True, delivers=True)
    result = await apply(
        workspace.store,
        workspace.registry,
        document,
        applied_by=who(),
        comment=f"signalsmith serve: {path}",
        directory=directory,
    )
    await workspace.refresh()
    state = "applied now" if result.applied else "unchanged"
    return [f"Workspace: {path} is version {result.version} ({state})"]


async def write_key_note(runtime: Runtime, write_key: str | None) -> list[str]:
    """A banner line when the development key's source is not one the workspace lists."""
    active = runtime.workspace.active
    if active is None or not write_key:
        return []
    source = await runtime.hooks.authenticate(Credentials(write_keys=(write_key,)), runtime)
    if source is None or source.id in active.pipelines:
        return []
    listed = sorted(active.pipelines)
    hint = (
        f"create one with `signalsmith keys create --source {listed[0]}`"
        if listed
        else "list a source in it"
    )
    return [
        f"  Note: the development key belongs to source {source.id!r}, which the workspace "
        f"does not list (its sources: {', '.join(listed) or 'none'}): requests with it get "
        f"403; add the source to the workspace, or {hint}"
    ]
