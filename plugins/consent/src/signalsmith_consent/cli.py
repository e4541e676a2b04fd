"""``signalsmith consent``: what is remembered about a user's consent, and erasing it."""

from __future__ import annotations

import click
import msgspec

from signalsmith import Runtime, print_table, run_with_runtime, settings_of
from signalsmith_consent.memory import ConsentMemory, Remembered
from signalsmith_consent.plugin import memory_of


@click.group()
def consent() -> None:
    """Consent preferences remembered per user (plugins/consent)."""


def _preferences(record: Remembered) -> str:
    if record.preferences is None:
        return "(none set)"
    if not record.preferences:
        return "{} (nothing granted)"
    return ", ".join(f"{name}={value}" for name, value in record.preferences.items())


@consent.command("show")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def show(ctx: click.Context, user: str, as_json: bool) -> None:
    """Print USER's remembered preferences (USER is a userId or an anonymousId), since when,
    and the identities linked to it (identify, alias)."""

    async def read(runtime: Runtime) -> list[Remembered]:
        return await memory_of(runtime).show(user)

    records = run_with_runtime(settings_of(ctx), read)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(records), indent=2).decode())
        return
    if not records:
        click.echo(f"nothing is remembered for {user!r}")
        return
    first = records[0]
    click.echo(f"user:        {user}")
    click.echo(f"preferences: {_preferences(first)}")
    click.echo(f"since:       {first.since or '-'}")
    click.echo(f"set by:      {first.message_id or '-'} (source {first.source_id or '-'})")
    click.echo(f"linked:      {', '.join(first.linked) or 'none'}")
    if first.expires_in is not None:
        click.echo(f"forgotten in {first.expires_in // 86_400} days unless set again")
    if len(records) > 1:
        print_table(
            [
                {"identity": r.identity, "preferences": _preferences(r), "since": r.since or "-"}
                for r in records
            ],
            ["identity", "preferences", "since"],
        )


@consent.command("forget")
@click.argument("user")
@click.pass_context
def forget(ctx: click.Context, user: str) -> None:
    """Erase what is remembered for USER and every identity linked to it (right to be
    forgotten). Events already buffered keep the preferences they were stamped with."""

    async def erase(runtime: Runtime) -> list[str]:
        memory: ConsentMemory = memory_of(runtime)
        return await memory.forget(user)

    erased = run_with_runtime(settings_of(ctx), erase)
    if not erased:
        click.echo(f"nothing is remembered for {user!r}")
        return
    click.echo(f"erased the consent records of {', '.join(erased)}")
