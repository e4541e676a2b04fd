"""``signalsmith serve``: Granian in front of the collector app, and the embedded defaults.

With ``SIGNALSMITH_REDIS_URL`` set, this process runs only the collector (Granian workers), so
collectors and workers scale separately. Without it, it also starts a real Redis server from
the data directory, and runs the worker inside the one collector process: the whole pipeline in
one command, with one process holding the sinks (an embedded warehouse allows only one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex

import click
import msgspec
from granian import Granian
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings

from signalsmith.admin import ensure_admin_token, write_server_file
from signalsmith.config import Settings
from signalsmith.embedded import RedisServerProcess
from signalsmith.plugins import call_impl, impls_in_call_order, resolve
from signalsmith.runtime import plugin_manager_for, start_runtime, stop_runtime

log = logging.getLogger("signalsmith.server")


def granian_server(
    settings: Settings, target: str = "signalsmith.app:create_app", *, factory: bool = True
) -> Granian:
    """The Granian server for the collector.

    ``bench/`` serves its bare baseline app through this same function (another ``target``), so
    the baseline and the collector cannot drift apart in server flags.
    """
    return Granian(
        target,
        factory=factory,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.http_workers,
        runtime_threads=1,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        # Granian closes a connection whose headers take longer (and any idle keep-alive one).
        http1_settings=HTTP1Settings(
            header_read_timeout=round(settings.header_read_timeout_seconds * 1000)
        ),
        websockets=False,
        backlog=2048,
        log_level="warning",  # type: ignore[arg-type]
    )


async def _embedded_defaults(settings: Settings) -> dict[str, str]:
    runtime = await start_runtime(settings, "cli", pm=plugin_manager_for(settings))
    try:
        found: dict[str, str] = {}
        for impl in impls_in_call_order(runtime.pm, "embedded_defaults"):
            found.update(await resolve(call_impl(impl, runtime=runtime)) or {})
        return found
    finally:
        await stop_runtime(runtime)


LABELS = {"write_key": "Development write key", "admin_token": "Admin token"}


def _banner(settings: Settings, redis_url: str, defaults: dict[str, str]) -> str:
    base = f"http://{settings.host}:{settings.port}"
    lines = [
        f"SignalSmith collector on {base}",
        f"  Redis (embedded): {redis_url}",
        f"  Data directory:   {settings.data_path.resolve()}",
    ]
    for name, value in defaults.items():
        label = LABELS.get(name, name.replace("_", " "))
        lines.append(f"  {label[0].upper() + label[1:]}: {value}")
    write_key = defaults.get("write_key")
    if write_key:
        body = '{"userId":"user-1","event":"Hello SignalSmith","properties":{"plan":"pro"}}'
        lines += [
            "  Send a track event:",
            f"    curl -sS {base}/v1/track -u {shlex.quote(write_key + ':')} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}",
        ]
    else:
        lines.append("  No write-key plugin is installed: install signalsmith-auth-writekey.")
    return "\n".join(lines)


def _connect_host(host: str) -> str:
    """Where a local client reaches a server listening on ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def serve(settings: Settings) -> None:
    """Run the collector until interrupted; on the embedded defaults, Redis and a worker too."""
    if settings.redis_url:
        granian_server(settings).serve()
        return

    settings.data_path.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServerProcess(settings.data_path / "redis", unix_socket=True)
    if redis_server._answers():
        raise click.ClickException(
            f"an embedded Redis is already running in {settings.data_path}: is another "
            "`signalsmith serve` using this data directory? Stop it or set SIGNALSMITH_DATA_DIR."
        )
    redis_server.start()
    try:
        # One HTTP worker process that also runs the sinks' worker (see the module docstring).
        embedded = msgspec.structs.replace(
            settings, redis_url=redis_server.url, http_workers=1, embedded_worker=True
        )
        # Granian's worker process reads its settings from the environment.
        os.environ["SIGNALSMITH_REDIS_URL"] = redis_server.url
        os.environ["SIGNALSMITH_HTTP_WORKERS"] = "1"
        os.environ["SIGNALSMITH_EMBEDDED_WORKER"] = "1"
        admin_token = settings.admin_token or ensure_admin_token(settings.data_path)
        os.environ["SIGNALSMITH_ADMIN_TOKEN"] = admin_token
        embedded = msgspec.structs.replace(embedded, admin_token=admin_token)
        defaults = asyncio.run(_embedded_defaults(embedded))
        defaults["admin_token"] = admin_token
        write_server_file(
            settings.data_path, f"http://{_connect_host(settings.host)}:{settings.port}"
        )
        click.echo(_banner(settings, redis_server.url, defaults), err=True)
        granian_server(embedded).serve()
    finally:
        redis_server.stop()
