"""The workspace endpoints of the admin API, under ``/api/v1/admin/config``.

The same operations as ``signalsmith config``, behind the admin-token guard. Documents travel as
their text (YAML or JSON) with the text of the files they include; an invalid one is answered
422 with every error, a stale base version 409.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.params import Body, QueryParameter

from signalsmith.di import RuntimeDependency
from signalsmith.workspace import (
    StaleBase,
    StoredVersion,
    VersionInfo,
    WorkspaceError,
    WorkspaceInvalid,
    WorkspaceStatus,
)
from signalsmith.workspace.diff import Change
from signalsmith.workspace.operations import NoSuchVersion, apply, preview, rollback
from signalsmith.workspace.schema import workspace_schema
from signalsmith.workspace.text import DocumentText


class DocumentBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A document to apply or preview: its text, the files it includes by relative path."""

    document: str
    files: dict[str, str] = {}
    format: Literal["yaml", "json"] = "yaml"
    # The version the change was made from; default: the current one.
    base_version: int | None = None
    comment: str = ""

    @property
    def text(self) -> DocumentText:
        return DocumentText(text=self.document, files=self.files, format=self.format)


class RollbackBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int
    base_version: int | None = None
    comment: str = ""


class Applied(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    applied: bool
    changes: list[Change]


class Preview(msgspec.Struct, frozen=True, kw_only=True):
    base_version: int
    changes: list[Change]


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An error answer: ``code`` and ``message`` as every error, and each document error."""

    code: str
    message: str
    errors: list[WorkspaceError] = []


def _problem(status: int, code: str, message: str, errors: list[WorkspaceError] | None = None):  # type: ignore[no-untyped-def]
    return Response(Problem(code=code, message=message, errors=errors or []), status_code=status)


def _invalid(error: WorkspaceInvalid) -> Response[Problem]:
    count = len(error.errors)
    return _problem(
        422,
        "invalid_workspace",
        f"the document has {count} error{'s' if count != 1 else ''}; nothing was applied",
        error.errors,
    )


def _client(request: Request[Any, Any, Any]) -> str:
    client = request.client
    return f"admin API from {client.host if client else 'unknown'}"


class WorkspaceController(Controller):
    path = "/config"
    tags = ["admin", "workspace"]

    @get("/", summary="The current version (or ?version=N) as written")
    async def show(
        self,
        runtime: RuntimeDependency,
        version: Annotated[int | None, QueryParameter()] = None,
    ) -> Response[Any]:
        store = runtime.workspace.store
        stored: StoredVersion | None = await (
            store.get(version) if version is not None else store.current()
        )
        if stored is None:
            return _problem(
                404,
                "not_found",
                f"no workspace version {version}"
                if version is not None
                else "no workspace applied yet; PUT /api/v1/admin/config applies one",
            )
        return Response(stored)

    @put("/", summary="Check a document whole and store it as the next version")
    async def apply(
        self,
        data: Annotated[DocumentBody, Body()],
        runtime: RuntimeDependency,
        request: Request[Any, Any, Any],
    ) -> Response[Any]:
        workspace = runtime.workspace
        try:
            result = await apply(
                workspace.store,
                workspace.registry,
                data.text,
                applied_by=_client(request),
                comment=data.comment,
                base_version=data.base_version,
            )
        except WorkspaceInvalid as error:
            return _invalid(error)
        except StaleBase as error:
            return _problem(409, "stale_version", str(error))
        return Response(
            Applied(version=result.version, applied=result.applied, changes=result.changes),
            status_code=200,
        )

    @post("/diff", summary="What applying a document would change", status_code=200)
    async def diff(
        self, data: Annotated[DocumentBody, Body()], runtime: RuntimeDependency
    ) -> Response[Any]:
        try:
            changes, base = await preview(
                runtime.workspace.store, runtime.workspace.registry, data.text
            )
        except WorkspaceInvalid as error:
            return _invalid(error)
        return Response(Preview(base_version=base, changes=changes))

    @get("/history", summary="Every version, newest first")
    async def history(self, runtime: RuntimeDependency) -> list[VersionInfo]:
        return await runtime.workspace.store.history()

    @post("/rollback", summary="Store a new version equal to an old one", status_code=200)
    async def rollback(
        self,
        data: Annotated[RollbackBody, Body()],
        runtime: RuntimeDependency,
        request: Request[Any, Any, Any],
    ) -> Response[Any]:
        workspace = runtime.workspace
        try:
            result = await rollback(
                workspace.store,
                workspace.registry,
                data.version,
                applied_by=_client(request),
                base_version=data.base_version,
                comment=data.comment,
            )
        except WorkspaceInvalid as error:
            return _invalid(error)
        except StaleBase as error:
            return _problem(409, "stale_version", str(error))
        except NoSuchVersion as error:
            return _problem(404, "not_found", str(error))
        return Response(
            Applied(version=result.version, applied=result.applied, changes=result.changes)
        )

    @get("/schema", summary="The document's JSON Schema for the installed plugins")
    async def schema(self, runtime: RuntimeDependency) -> dict[str, Any]:
        return workspace_schema(runtime.workspace.registry)

    @get("/status", summary="The version this process runs")
    async def status(self, runtime: RuntimeDependency) -> WorkspaceStatus:
        return runtime.workspace.status()


def workspace_routes() -> list[Any]:
    return [WorkspaceController]
