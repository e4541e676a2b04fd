"""The ``signalsmith`` command: the frame, the core commands, and commands plugins add.

Plugins add commands through the ``register_commands(cli)`` hook; ``cli_runtime`` gives a
command the same Runtime (settings, Redis, plugins) a collector has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import click
import msgspec

from signalsmith.boot import plugin_manager_for, start_runtime, stop_runtime
from signalsmith.config import Settings
from signalsmith.dlq_cli import dlq
from signalsmith.embedded import RedisServerProcess
from signalsmith.hooks import Hooks
from signalsmith.plugins import plugin_infos
from signalsmith.runtime import Runtime
from signalsmith.workspace_cli import config

T = TypeVar("T")


@contextlib.contextmanager
def redis_url_for_command(settings: Settings) -> Iterator[str]:
    """The Redis a one-off command should use.

    ``SIGNALSMITH_REDIS_URL`` when set; else the embedded server of a running ``signalsmith
    serve`` (its socket in the data directory); else the embedded server started just for this
    command, on the same data, so what the command writes is there when ``serve`` starts.
    """
    if settings.redis_url:
        yield settings.redis_url
        return
    server = RedisServerProcess(settings.data_path / "redis", unix_socket=True)
    if server._answers():
        yield server.url
        return
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def cli_runtime(settings: Settings, redis_url: str) -> AsyncIterator[Runtime]:
    runtime = await start_runtime(
        msgspec.structs.replace(settings, redis_url=redis_url),
        "cli",
        pm=plugin_manager_for(settings),
    )
    try:
        yield runtime
    finally:
        await stop_runtime(runtime)


def run_with_runtime(settings: Settings, action: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run ``action(runtime)`` to completion for a CLI command that needs Redis and plugins."""

    async def main(redis_url: str) -> T:
        async with cli_runtime(settings, redis_url) as runtime:
            return await action(runtime)

    with redis_url_for_command(settings) as redis_url:
        return asyncio.run(main(redis_url))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain aligned table; what `keys list` and `plugins` print."""
    widths = {c: max([len(c), *(len(str(row.get(c, ""))) for row in rows)]) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def settings_of(ctx: click.Context) -> Settings:
    """The settings the CLI was built with (``build_cli``), else the environment's."""
    obj = ctx.find_root().obj
    if isinstance(obj, dict) and "settings" in obj:
        return obj["settings"]
    return Settings.from_env()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List installed plugins with their versions and the hooks they implement."""
    infos = plugin_infos(plugin_manager_for(settings_of(ctx)))
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(infos)).decode())
        return
    print_table(
        [{"name": i.name, "version": i.version or "-", "hooks": ", ".join(i.hooks)} for i in infos],
        ["name", "version", "hooks"],
    )


@click.command()
@click.option("--host", default=None, help="Address to listen on (SIGNALSMITH_HOST).")
@click.option("--port", type=int, default=None, help="Port to listen on (SIGNALSMITH_PORT).")
@click.option("--workers", type=int, default=None, help="HTTP worker processes.")
@click.option(
    "--data-dir",
    default=None,
    help="Where the embedded Redis, keys and warehouse live (SIGNALSMITH_DATA_DIR; "
    "default .signalsmith in the working directory).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    workers: int | None,
    data_dir: str | None,
) -> None:
    """Run the collector (and, on the embedded defaults, Redis and the worker with it)."""
    from signalsmith.server import CannotServe
    from signalsmith.server import serve as run_server

    settings = settings_of(ctx)
    changes: dict[str, Any] = {}
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    if workers is not None:
        changes["http_workers"] = workers
    if data_dir is not None:
        changes["data_dir"] = data_dir
    try:
        run_server(msgspec.structs.replace(settings, **changes))
    except CannotServe as error:
        click.echo(f"signalsmith serve: {error}", err=True)
        ctx.exit(1)


@click.command()
@click.option("--sink", "sink_names", multiple=True, help="Only run these sinks (repeatable).")
@click.pass_context
def worker(ctx: click.Context, sink_names: tuple[str, ...]) -> None:
    """Run the worker: one consumer loop per sink, until interrupted."""
    from signalsmith.worker import run_worker

    settings = settings_of(ctx)
    if not settings.redis_url:
        raise click.ClickException(
            "signalsmith worker needs SIGNALSMITH_REDIS_URL; on the embedded defaults "
            "`signalsmith serve` already runs the worker"
        )
    run_worker(settings, only=sink_names or None)


def print_versions(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    """``--version``: the core's version and every plugin's, then exit."""
    if not value or ctx.resilient_parsing:
        return
    from signalsmith import __version__

    click.echo(f"signalsmith {__version__}")
    for info in plugin_infos(plugin_manager_for(settings_of(ctx))):
        click.echo(f"  {info.name} {info.version or '(no version)'}")
    ctx.exit()


def build_cli(settings: Settings | None = None) -> click.Group:
    """A fresh ``signalsmith`` group: the core commands plus every plugin's (``register_commands``).

    Commands read ``settings`` through ``settings_of(ctx)``.
    """
    settings = settings or Settings.from_env()

    @click.group(context_settings={"obj": {"settings": settings}})
    @click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=print_versions,
        help="Show the version of SignalSmith and of each plugin, and exit.",
    )
    def cli() -> None:
        """SignalSmith: a self-hosted, Segment-compatible customer-event pipeline."""

    for command in (plugins, serve, worker, config, dlq):
        cli.add_command(command)
    Hooks(plugin_manager_for(settings)).add_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_env()
    except msgspec.ValidationError as error:
        click.echo(f"error: invalid SIGNALSMITH_* setting: {error}", err=True)
        sys.exit(2)
    build_cli(settings).main(args=argv, prog_name="signalsmith")
