"""``signalsmith trace ID`` and ``signalsmith debugger token ...``.

They read and write Redis directly (the same keys the server uses), so they work whether or not
a server is running; on the embedded defaults they find the running ``serve``'s Redis.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import Any

import click
import msgspec
from litestar.exceptions import NotFoundException

from signalsmith import Runtime, print_table, run_with_runtime, settings_of
from signalsmith_debugger.access import CreatedToken, TokenInfo, TokenNotFound
from signalsmith_debugger.records import Trace
from signalsmith_debugger.state import NAME, DebuggerState

_DURATION = re.compile(r"(\d+)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    """Seconds, written as 90, 90s, 15m, 24h or 30d."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION.fullmatch(str(value).strip().lower())
        if match is None or int(match.group(1)) == 0:
            self.fail(f"{value!r} is not a duration: write 90, 90s, 15m, 24h or 30d", param, ctx)
        return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _state(runtime: Runtime) -> DebuggerState:
    return runtime.attached(NAME, DebuggerState)


def _when(moment: datetime | None, *, precise: bool = False) -> str:
    if moment is None:
        return "-"
    text = moment.isoformat(timespec="milliseconds" if precise else "seconds")
    return text.replace("+00:00", "Z")


@click.command("trace")
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="Print the trace as JSON.")
@click.option("--payloads", is_flag=True, help="Also print the event as each step kept it.")
@click.pass_context
def trace(ctx: click.Context, message_id: str, as_json: bool, payloads: bool) -> None:
    """Where did the event MESSAGE_ID go? Every step of its path, and why.

    Exit code 0 when the event is traced, 1 when no trace of it is kept.
    """
    from signalsmith_debugger.routes import trace_of

    async def read(runtime: Runtime) -> Trace | str:
        try:
            return await trace_of(runtime, message_id)
        except NotFoundException as error:
            return str(error.detail)

    found = run_with_runtime(settings_of(ctx), read)
    if isinstance(found, str):
        click.echo(found, err=True)
        sys.exit(1)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(found)).decode())
        return
    user = found.user_id or "-"
    if found.anonymous_id:
        user += f" (anonymous {found.anonymous_id})"
    name = f" {found.event!r}" if found.event else ""
    click.echo(f"messageId  {found.message_id}")
    click.echo(f"source     {', '.join(found.source_ids)}")
    click.echo(f"event      {found.type or '-'}{name}, user {user}")
    click.echo(f"answer     {found.summary}")
    click.echo("")
    rows = [
        {
            "time": _when(step.at, precise=True),
            "process": step.role,
            "stage": step.stage,
            "status": step.status,
            "sink": f"{step.sink} ({step.sink_kind})" if step.sink else "",
            "why": "; ".join(part for part in (step.reason, step.detail) if part),
        }
        for step in found.steps
    ]
    print_table(rows, ["time", "process", "stage", "status", "sink", "why"])
    if payloads:
        for step in found.steps:
            if step.payload is None:
                continue
            cut = f", shortened from {step.payload_size} bytes" if step.payload_truncated else ""
            click.echo(f"\n{step.stage} {step.status} ({_when(step.at, precise=True)}{cut}):")
            click.echo(msgspec.json.format(msgspec.json.encode(step.payload)).decode())


@click.group()
def debugger() -> None:
    """The event debugger: tokens that see only some sources."""


@debugger.group()
def token() -> None:
    """Debugger tokens: accepted by the debugger page and its API only, scoped to sources."""


@token.command("create")
@click.option(
    "--source", "sources", multiple=True, required=True, help="A source the token sees (repeat)."
)
@click.option("--name", default="", help="A name for listings (default: the sources).")
@click.option(
    "--expires-in", type=Duration(), default=None, help="Expire after 90s, 15m, 24h, 30d."
)
@click.pass_context
def create(ctx: click.Context, sources: tuple[str, ...], name: str, expires_in: int | None) -> None:
    """Create a token that sees only the events of these sources; it is shown once."""

    async def action(runtime: Runtime) -> CreatedToken:
        return await _state(runtime).tokens.create(list(sources), name=name, expires_in=expires_in)

    try:
        created = run_with_runtime(settings_of(ctx), action)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    info = created.info
    click.echo(f"debugger token {info.id} ({info.name}) for sources: {', '.join(info.sources)}")
    if info.expires_at is not None:
        click.echo(f"expires {_when(info.expires_at)}")
    click.echo("Shown once; only its SHA-256 is kept. Paste it into the page at /debugger:")
    click.echo(created.token)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_tokens(ctx: click.Context, as_json: bool) -> None:
    """The debugger tokens (their ids, names and sources; never the tokens)."""

    async def action(runtime: Runtime) -> list[TokenInfo]:
        return await _state(runtime).tokens.listing()

    listed = run_with_runtime(settings_of(ctx), action)
    if as_json:
        click.echo(msgspec.json.encode(listed).decode())
        return
    print_table(
        [
            {
                "id": info.id,
                "name": info.name,
                "sources": ",".join(info.sources),
                "created": _when(info.created_at),
                "expires": _when(info.expires_at),
            }
            for info in listed
        ],
        ["id", "name", "sources", "created", "expires"],
    )


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke the token TOKEN_ID (its id or name); open pages using it stop within seconds."""

    async def action(runtime: Runtime) -> TokenInfo:
        return await _state(runtime).tokens.revoke(token_id)

    try:
        info = run_with_runtime(settings_of(ctx), action)
    except TokenNotFound as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"revoked debugger token {info.id} ({info.name})")
