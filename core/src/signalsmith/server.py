"""``signalsmith serve``: Granian in front of the collector app, and the embedded defaults.

With ``SIGNALSMITH_REDIS_URL`` set, this process runs only the collector (Granian workers), so
collectors and workers scale separately. Without it, it also starts a real Redis server from
the data directory, and runs the worker inside the one collector process: the whole pipeline in
one command, with one process holding the sinks (an embedded warehouse allows only one).

The embedded serve owns its processes: Redis is restarted when it dies (``supervisor``), the
children die with the serve process (a parent-death signal), and a stop goes in order: Granian
stops accepting and finishes its requests, the worker delivers and acknowledges what was
accepted, and Redis stops last.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import msgspec
from granian import Granian
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings

from signalsmith.admin import (
    ADMIN_TOKEN_FILE,
    ensure_admin_token,
    read_admin_token,
    remove_server_file,
    write_server_file,
)
from signalsmith.boot import plugin_manager_for, start_runtime, stop_runtime
from signalsmith.config import DEFAULT_DATA_DIR, Settings
from signalsmith.datadir import LEFTOVER_WAIT_SECONDS, DataDirInUse, DataDirLock
from signalsmith.embedded import RedisServerProcess
from signalsmith.processes import describe_pid, die_with_parent, listeners_on_port
from signalsmith.records import BannerSecret, BannerValue, CliCommand
from signalsmith.supervisor import RedisSupervisor
from signalsmith.workspace import BuildFailed, StaleBase, WorkspaceInvalid
from signalsmith.workspace.local import WORKSPACE_FILE, apply_local_workspace, write_key_note

log = logging.getLogger("signalsmith.server")


class CannotServe(Exception):
    """`signalsmith serve` cannot start; the message says why and what to do, in one line."""


def granian_server(
    settings: Settings, target: str = "signalsmith.server:worker_app", *, factory: bool = True
) -> Granian:
    """The Granian server for the collector.

    ``bench/`` serves its bare baseline app through this same function (another ``target``), so
    the baseline and the collector cannot drift apart in server flags.
    """
    server = Granian(
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
    # Granian installs its own SIGHUP handler (respawn the workers) as it starts; replace it.
    server.on_startup(_ignore_reload_signal)
    return server


def worker_app() -> Any:
    """Granian's factory, run in each worker process: the collector app, bound to serve.

    The worker gets SIGTERM when the serve process dies, however it dies, so it never keeps the
    port and the warehouse after it. SIGHUP and SIGINT are the serve process's to act on: it
    ignores the first and stops the worker in order on the second.
    """
    from signalsmith.collector import create_app
    from signalsmith.embedded_worker import EmbeddedWorker

    parent = multiprocessing.parent_process()
    die_with_parent(signal.SIGTERM, parent.pid if parent is not None else os.getppid())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = Settings.from_env()
    # On the embedded defaults the worker runs here too (see the module docstring).
    app = create_app(settings, companions=[EmbeddedWorker()] if settings.embedded_worker else [])
    app.on_startup.append(_leave_interrupts_to_serve)
    return app


def _leave_interrupts_to_serve() -> None:
    # Ctrl-C reaches every process of the terminal's process group. Granian's worker would start
    # its own shutdown at once; serve stops it (SIGTERM) once it has itself stopped accepting.
    asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ignore_reload_signal() -> None:
    signal.signal(signal.SIGHUP, _on_reload_signal)


def _on_reload_signal(signum: int, frame: object) -> None:
    # A reload would start a second worker beside the first; with the embedded warehouse only
    # one process may hold it. Settings are read once at start anyway.
    log.warning(
        "SIGHUP ignored: signalsmith serve does not reload; restart it to apply new settings"
    )


def check_port_free(host: str, port: int, *, wait: float = 0.0) -> None:
    """Raise ``CannotServe`` unless a server could listen on ``host:port``, now or within
    ``wait`` seconds (the worker of a server that died may still be exiting).

    Binds without SO_REUSEPORT: Granian listens with it, so a second server binding with it
    would share the port with the first (each would get part of the traffic) instead of
    failing.
    """
    deadline = time.monotonic() + wait
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # A port whose old connections are in TIME_WAIT is free to listen on.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except socket.gaierror as error:
                raise CannotServe(f"cannot listen on {host}: {error.strerror} (--host)") from None
            except OSError as error:
                if error.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise CannotServe(_bind_error(host, port, error)) from None
        time.sleep(0.1)


def _bind_error(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        holders = ", ".join(describe_pid(pid) for pid in listeners_on_port(port))
        return (
            f"port {port} on {host} is in use (by {holders or 'another program'}); "
            "stop it or choose another port with --port"
        )
    if error.errno == errno.EACCES:
        return (
            f"not allowed to listen on port {port} on {host}; choose a port above 1023 with --port"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine (--host)"
    return f"cannot listen on port {port} on {host}: {error.strerror}"


def _make_data_dir(path: Path) -> None:
    """Create the data directory if needed; raise ``CannotServe`` unless we can write to it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CannotServe(
            f"cannot create the data directory {path} ({error.strerror}); run it from a "
            "directory you can write to, or choose one with --data-dir"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CannotServe(
            f"cannot write to the data directory {path}; run it from a directory you can "
            "write to, or choose one with --data-dir"
        )


def serve(settings: Settings) -> None:
    """Run the collector until interrupted; on the embedded defaults, Redis and a worker too.

    Raises ``CannotServe`` before starting anything when it cannot run (port in use, data
    directory unwritable or held by another server).
    """
    # Until Granian takes over the signals: a SIGHUP must not kill us half-started.
    signal.signal(signal.SIGHUP, _on_reload_signal)
    if settings.redis_url:
        check_port_free(settings.host, settings.port)
        # Granian's worker processes read their settings from the environment.
        os.environ.update(settings.to_env())
        granian_server(settings).serve()
        return
    _serve_embedded(msgspec.structs.replace(settings, data_dir=str(settings.data_path.absolute())))


def _serve_embedded(settings: Settings) -> None:
    data_path = settings.data_path
    lock = DataDirLock(data_path)
    try:
        if data_path.is_dir():
            # First, so that the port a dead server's worker still holds is free once it exits.
            _make_data_dir(data_path)
            lock.acquire()
        check_port_free(
            settings.host, settings.port, wait=LEFTOVER_WAIT_SECONDS if lock.took_over_from else 0
        )
        _make_data_dir(data_path)
        if not lock.held:
            lock.acquire()
        redis_server = RedisServerProcess(data_path / "redis", unix_socket=True)
        lock.take_over_redis(redis_server)
    except DataDirInUse as error:
        lock.release()
        raise CannotServe(str(error)) from None
    except OSError as error:
        lock.release()
        raise CannotServe(f"cannot use the data directory {data_path}: {error.strerror}") from None
    except BaseException:
        lock.release()
        raise
    try:
        try:
            supervisor = RedisSupervisor(redis_server).start()
        except RuntimeError as error:
            log.error("%s", error)
            raise CannotServe(
                f"the embedded Redis did not start; see {redis_server.data_dir / 'redis.log'}"
            ) from None
        try:
            _run_embedded(settings, redis_server)
        finally:
            # Last: the worker has delivered and acknowledged by now (Granian has returned).
            supervisor.stop()
            remove_server_file(data_path)
    finally:
        lock.release()


def _run_embedded(settings: Settings, redis_server: RedisServerProcess) -> None:
    stored_token = read_admin_token(settings.data_path)
    admin_token = settings.admin_token or ensure_admin_token(settings.data_path)
    # One HTTP worker process that also runs the sinks' worker (see the module docstring).
    embedded = msgspec.structs.replace(
        settings,
        redis_url=redis_server.url,
        http_workers=1,
        embedded_worker=True,
        admin_token=admin_token,
    )
    # Granian's worker process reads its settings from the environment.
    os.environ.update(embedded.to_env())
    workspace_file = Path(WORKSPACE_FILE)
    defaults, workspace = asyncio.run(
        _embedded_defaults(embedded, workspace_file if workspace_file.is_file() else None)
    )
    if settings.admin_token:
        defaults["admin_token"] = "from SIGNALSMITH_ADMIN_TOKEN"
    else:
        defaults["admin_token"] = BannerSecret(
            value=admin_token,
            new=stored_token is None,
            path=str(settings.data_path / ADMIN_TOKEN_FILE),
        )
    write_server_file(settings.data_path, settings.local_url)
    click.echo(_banner(settings, redis_server.url, defaults, workspace), err=True)
    granian_server(embedded).serve()


async def _embedded_defaults(
    settings: Settings, workspace_file: Path | None = None
) -> tuple[dict[str, BannerValue], list[str]]:
    """What the banner shows: the plugins' defaults, and the workspace's lines."""
    runtime = await start_runtime(settings, "cli", pm=plugin_manager_for(settings))
    try:
        # ./signalsmith.yaml, when there is one, is applied before anything starts (issue 11).
        lines: list[str] = []
        if workspace_file is not None:
            try:
                lines = await apply_local_workspace(runtime, workspace_file)
            except (WorkspaceInvalid, BuildFailed, StaleBase) as error:
                raise click.ClickException(
                    f"{workspace_file}: {error}\nfix it, or move it away to serve without it"
                ) from None
        defaults = await runtime.hooks.embedded_defaults(runtime)
        write_key = defaults.get("write_key")
        key = write_key.value if isinstance(write_key, BannerSecret) else write_key
        lines += await write_key_note(runtime, key if isinstance(key, str) else None)
        return defaults, lines
    finally:
        await stop_runtime(runtime)


LABELS = {"write_key": "Development write key", "admin_token": "Admin token"}


def signalsmith_command() -> list[str]:
    """How a shell runs this installation's `signalsmith`, with or without its venv active.

    The console script this process was started as (``.venv/bin/signalsmith``), else this
    Python with ``-m signalsmith``; relative to the working directory when inside it.
    """
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "signalsmith":
        found = script if os.sep in script else shutil.which(script)
        if found:
            return [_shown_path(found)]
    return [_shown_path(sys.executable), "-m", "signalsmith"]


def _shown_path(path: str) -> str:
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    return relative if not relative.startswith("..") and os.sep in relative else absolute


def _banner(
    settings: Settings,
    redis_url: str,
    defaults: dict[str, BannerValue],
    workspace: Sequence[str] = (),
) -> str:
    base = settings.local_url
    command = signalsmith_command()
    if settings.data_path != Path(DEFAULT_DATA_DIR).absolute():
        command = [f"SIGNALSMITH_DATA_DIR={shlex.quote(str(settings.data_path))}", *command]

    def runnable(args: tuple[str, ...]) -> str:
        return " ".join([*command[:1], *map(shlex.quote, [*command[1:], *args])])

    lines = [
        f"SignalSmith collector on {base}",
        f"  Redis (embedded): {redis_url}",
        f"  Data directory:   {settings.data_path}",
    ]
    for name, value in defaults.items():
        label = LABELS.get(name, name.replace("_", " "))
        label = label[0].upper() + label[1:]
        if isinstance(value, BannerSecret):
            if value.new:
                text = f"{value.value}  (new: shown this once; kept in {value.path})"
            else:
                text = f"kept in {value.path}"
                if value.command:
                    text += f"; `{runnable(value.command)}` lists them"
        elif isinstance(value, CliCommand):
            text = runnable(value.args)
        else:
            text = str(value)
        lines.append(f"  {label}: {text}")
    lines += [line if line.startswith(" ") else f"  {line}" for line in workspace]
    write_key = defaults.get("write_key")
    if write_key:
        body = '{"userId":"user-1","event":"Hello SignalSmith","properties":{"plan":"pro"}}'
        if isinstance(write_key, BannerSecret) and not write_key.new:
            # Read from its file, so the key itself is not printed again.
            user = f'"$(cat {shlex.quote(write_key.path)}):"'
        else:
            key = write_key.value if isinstance(write_key, BannerSecret) else str(write_key)
            user = shlex.quote(key + ":")
        lines += [
            "  Send a track event:",
            f"    curl -sS {base}/v1/track -u {user} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}",
        ]
    else:
        lines.append("  No write-key plugin is installed: install signalsmith-auth-writekey.")
    return "\n".join(lines)
