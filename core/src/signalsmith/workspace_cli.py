"""``signalsmith config``: check, apply, show, diff, list and roll back workspace versions.

Every command that reads or writes versions uses the Redis of ``SIGNALSMITH_REDIS_URL`` (or the
embedded one of ``signalsmith serve``), and checks documents against the plugins installed where
the command runs. `docs/workspace.md` shows each command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from signalsmith.boot import plugin_manager_for
from signalsmith.config import Settings
from signalsmith.hooks import Hooks
from signalsmith.runtime import Runtime
from signalsmith.workspace import Registry, StaleBase, WorkspaceInvalid
from signalsmith.workspace.diff import Change
from signalsmith.workspace.operations import (
    NoSuchVersion,
    apply,
    file_reader,
    preview,
    read_local,
    rollback,
)
from signalsmith.workspace.schema import workspace_schema
from signalsmith.workspace.store import who
from signalsmith.workspace.validation import load_document


def _settings(ctx: click.Context) -> Settings:
    from signalsmith import settings_of

    return settings_of(ctx)


def _run(ctx: click.Context, action: Any) -> Any:
    from signalsmith import run_with_runtime

    return run_with_runtime(_settings(ctx), action)


def _registry(ctx: click.Context) -> Registry:
    return Registry.from_hooks(Hooks(plugin_manager_for(_settings(ctx))))


def _invalid(error: WorkspaceInvalid, name: str) -> click.ClickException:
    return click.ClickException(f"{name}: {error}\nnothing was applied")


def _read(path: str) -> tuple[Any, Path]:
    try:
        return read_local(path)
    except (OSError, UnicodeDecodeError) as error:
        raise click.ClickException(f"cannot read {path}: {error}") from None


def _print_changes(changes: list[Change]) -> None:
    for change in changes:
        click.echo(f"  {change}")


@click.group("config")
def config() -> None:
    """The workspace: sources, transforms and destinations (docs/workspace.md)."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def check(ctx: click.Context, file: str) -> None:
    """Check FILE against the installed plugins, without applying it."""
    document, directory = _read(file)
    try:
        typed, _ = load_document(document, _registry(ctx), read_file=file_reader(directory))
    except WorkspaceInvalid as error:
        raise click.ClickException(f"{file}: {error}") from None
    click.echo(
        f"{file} is valid: {len(typed.sources)} sources, {len(typed.transforms)} transforms, "
        f"{len(typed.destinations)} destinations"
    )


@config.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--base",
    "base_version",
    type=int,
    default=None,
    help="The version this change was made from (default: the current one).",
)
@click.option("--comment", "-m", default="", help="Why, for `config history`.")
@click.pass_context
def apply_command(ctx: click.Context, file: str, base_version: int | None, comment: str) -> None:
    """Check FILE whole and store it as the next version; every process follows it."""
    document, directory = _read(file)

    async def action(runtime: Runtime) -> Any:
        workspace = runtime.workspace
        return await apply(
            workspace.store,
            workspace.registry,
            document,
            applied_by=who(),
            comment=comment,
            base_version=base_version,
            directory=directory,
        )

    try:
        result = _run(ctx, action)
    except WorkspaceInvalid as error:
        raise _invalid(error, file) from None
    except StaleBase as error:
        raise click.ClickException(str(error)) from None
    if not result.applied:
        click.echo(f"unchanged: {file} is version {result.version}, the current one")
        return
    click.echo(f"applied {file} as version {result.version}:")
    _print_changes(result.changes)
    if not result.changes:
        click.echo("  (the same components; only the text differs)")
    click.echo("collectors and workers switch to it within a second")


@config.command("diff")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def diff(ctx: click.Context, file: str) -> None:
    """What applying FILE would change, component by component."""
    document, directory = _read(file)

    async def action(runtime: Runtime) -> Any:
        return await preview(
            runtime.workspace.store, runtime.workspace.registry, document, directory=directory
        )

    try:
        changes, base = _run(ctx, action)
    except WorkspaceInvalid as error:
        raise click.ClickException(f"{file}: {error}") from None
    if not changes:
        click.echo(f"no change from version {base}")
        return
    click.echo(f"changes from version {base}:")
    _print_changes(changes)


@config.command("show")
@click.option("--version", "version", type=int, default=None, help="A version (default: current).")
@click.option("--files", is_flag=True, help="Also print the files the document includes.")
@click.option("--json", "as_json", is_flag=True, help="Print the version and its metadata as JSON.")
@click.pass_context
def show(ctx: click.Context, version: int | None, files: bool, as_json: bool) -> None:
    """Print a version's document as written (secrets stay ${ENV_NAME} placeholders)."""

    async def action(runtime: Runtime) -> Any:
        store = runtime.workspace.store
        return await (store.get(version) if version is not None else store.current())

    stored = _run(ctx, action)
    if stored is None:
        raise click.ClickException(
            f"no workspace version {version}"
            if version is not None
            else "no workspace applied "
            "yet; apply one with `signalsmith config apply signalsmith.yaml`"
        )
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(stored)).decode())
        return
    click.echo(
        f"# version {stored.version}, applied {stored.applied_at:%Y-%m-%d %H:%M:%S} UTC by "
        f"{stored.applied_by}" + (f": {stored.comment}" if stored.comment else ""),
        err=True,
    )
    sys.stdout.write(stored.text if stored.text.endswith("\n") else stored.text + "\n")
    if files:
        for name, text in sorted(stored.files.items()):
            click.echo(f"# --- {name}")
            sys.stdout.write(text if text.endswith("\n") else text + "\n")


@config.command("history")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def history(ctx: click.Context, as_json: bool) -> None:
    """List every version, newest first."""
    from signalsmith import print_table

    async def action(runtime: Runtime) -> Any:
        store = runtime.workspace.store
        return await store.history(), await store.current_version()

    versions, current = _run(ctx, action)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(versions)).decode())
        return
    rows = [
        {
            "version": f"{info.version}{' *' if info.version == current else ''}",
            "applied at (UTC)": f"{info.applied_at:%Y-%m-%d %H:%M:%S}",
            "by": info.applied_by,
            "base": info.base_version,
            "comment": info.comment,
        }
        for info in versions
    ]
    print_table(rows, ["version", "applied at (UTC)", "by", "base", "comment"])


@config.command("rollback")
@click.argument("version", type=int)
@click.option("--base", "base_version", type=int, default=None, help="Expected current version.")
@click.option("--comment", "-m", default="", help="Why, for `config history`.")
@click.pass_context
def rollback_command(
    ctx: click.Context, version: int, base_version: int | None, comment: str
) -> None:
    """Store a new version equal to VERSION; every process follows it."""

    async def action(runtime: Runtime) -> Any:
        return await rollback(
            runtime.workspace.store,
            runtime.workspace.registry,
            version,
            applied_by=who(),
            base_version=base_version,
            comment=comment,
        )

    try:
        result = _run(ctx, action)
    except WorkspaceInvalid as error:
        raise click.ClickException(
            f"version {version} does not fit the installed plugins any more: {error}"
        ) from None
    except (StaleBase, NoSuchVersion) as error:
        raise click.ClickException(str(error)) from None
    if not result.applied:
        click.echo(f"unchanged: version {version} is the current document already")
        return
    click.echo(f"rolled back to version {version} as version {result.version}:")
    _print_changes(result.changes)


@config.command("schema")
@click.pass_context
def schema(ctx: click.Context) -> None:
    """Print the document's JSON Schema, as the installed plugins define it."""
    click.echo(json.dumps(workspace_schema(_registry(ctx)), indent=2))
