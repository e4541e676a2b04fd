"""``signalsmith dlq``: list, show, replay and drop what a sink dead-lettered.

Every command uses the Redis of ``SIGNALSMITH_REDIS_URL`` (or the embedded one of
``signalsmith serve``). `docs/worker.md` ("Dead letters and replay") shows each command.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime
from typing import Any

import click
import msgspec

from signalsmith.deadletters import (
    DEFAULT_REPLAY_RATE,
    LetterQuery,
    drop_letters,
    get_letter,
    list_letters,
    parse_moment,
    replay_letters,
    replay_progress,
    sinks_with_letters,
)
from signalsmith.runtime import Runtime

# How often a replay's progress is looked at, and after how long without any a hint is shown.
PROGRESS_POLL_SECONDS = 0.25
STALL_HINT_SECONDS = 10.0


def _run(ctx: click.Context, action: Any) -> Any:
    from signalsmith import run_with_runtime, settings_of

    return run_with_runtime(settings_of(ctx), action)


def _moment(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_moment(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _query(
    since: datetime | None,
    until: datetime | None,
    event: str | None,
    error: str | None,
    ids: tuple[str, ...] = (),
) -> LetterQuery:
    return LetterQuery(since=since, until=until, event=event, error=error, ids=ids)


def _filters(command: Any) -> Any:
    """The options that select dead-lettered events, shared by list, replay and drop."""
    for option in reversed(
        [
            click.option(
                "--since", callback=_moment, help="Failed at or after (ISO-8601, or ago: 2h, 30m)."
            ),
            click.option("--until", callback=_moment, help="Failed at or before (as --since)."),
            click.option(
                "--event",
                metavar="PATTERN",
                help="Event name, shell-style ('Order *'): a track's event, a page's name, "
                "else the message type.",
            ),
            click.option("--error", metavar="TEXT", help="Text in the event's reason (any case)."),
        ]
    ):
        command = option(command)
    return command


def _echo_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value)).decode())


def _short(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group("dlq")
def dlq() -> None:
    """Dead letters: what each sink gave up on, and replaying it (docs/worker.md)."""


@dlq.command("list")
@click.argument("sink", required=False)
@_filters
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_command(
    ctx: click.Context,
    sink: str | None,
    since: datetime | None,
    until: datetime | None,
    event: str | None,
    error: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Sinks with dead letters; with SINK, its dead-letter entries (oldest first)."""
    from signalsmith import print_table

    query = _query(since, until, event, error)

    async def action(runtime: Runtime) -> Any:
        prefix = runtime.settings.key_prefix
        if sink is None:
            return await sinks_with_letters(runtime.redis, prefix)
        return await list_letters(runtime.redis, prefix, sink, query, limit=limit)

    found = _run(ctx, action)
    if as_json:
        _echo_json(found)
        return
    if sink is None:
        if not found:
            click.echo("no dead letters")
            return
        print_table(
            [msgspec.to_builtins(item) for item in found],
            ["sink", "entries", "events", "oldest", "newest"],
        )
        return
    if not found:
        click.echo(f"no dead letters for {sink} match")
        return
    print_table(
        [
            {
                "id": letter.id,
                "failed at": letter.failed_at,
                "events": letter.count,
                "attempts": letter.attempts,
                "from": letter.origin,
                "error": _short(letter.error) + (" (undecodable)" if letter.undecodable else ""),
            }
            for letter in found
        ],
        ["id", "failed at", "events", "attempts", "from", "error"],
    )


@dlq.command("show")
@click.argument("sink")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True, help="Print the entry and its events as JSON.")
@click.pass_context
def show_command(ctx: click.Context, sink: str, entry_id: str, as_json: bool) -> None:
    """One dead-letter entry: why each event failed, and (--json) the events themselves."""

    async def action(runtime: Runtime) -> Any:
        return await get_letter(runtime.redis, runtime.settings.key_prefix, sink, entry_id)

    letter = _run(ctx, action)
    if letter is None:
        raise click.ClickException(
            f"no dead-letter entry {entry_id} for {sink}; list them with `signalsmith dlq "
            f"list {sink}`"
        )
    if as_json:
        _echo_json(letter)
        return
    click.echo(f"entry      {letter.id} of {letter.sink}")
    click.echo(f"failed at  {letter.failed_at} after {letter.attempts} attempt(s)")
    click.echo(f"from       {letter.origin} entries {', '.join(letter.entry_ids) or '-'}")
    click.echo(f"error      {letter.error}")
    if letter.undecodable:
        click.echo("the entry could not be decoded; it is kept as written and can be replayed")
        return
    click.echo(f"events     {letter.count}")
    for item in letter.events:
        name = f" {item.name!r}" if item.name else ""
        click.echo(f"  {item.message_id}  {item.type}{name}  received {item.received_at}")
        if item.reason != letter.error:
            click.echo(f"    {item.reason}")


@dlq.command("replay")
@click.argument("sink")
@_filters
@click.option("--id", "ids", multiple=True, help="Only this entry (repeatable).")
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=DEFAULT_REPLAY_RATE,
    show_default=True,
    help="Events per second the worker may deliver (0: no limit).",
)
@click.option("--keep", is_flag=True, help="Keep the events in the dead letters too.")
@click.option("--dry-run", is_flag=True, help="Only say what would be replayed.")
@click.option("--no-wait", is_flag=True, help="Do not follow the delivery.")
@click.pass_context
def replay_command(
    ctx: click.Context,
    sink: str,
    since: datetime | None,
    until: datetime | None,
    event: str | None,
    error: str | None,
    ids: tuple[str, ...],
    rate: float,
    keep: bool,
    dry_run: bool,
    no_wait: bool,
) -> None:
    """Send SINK's dead-lettered events to SINK again (and only to it), keeping messageIds.

    The events move to the sink's replay stream, which a worker delivers at --rate; a progress
    bar follows them until each is delivered or dead-lettered again.
    """
    query = _query(since, until, event, error, ids)

    async def action(runtime: Runtime) -> Any:
        redis, prefix = runtime.redis, runtime.settings.key_prefix
        if dry_run:
            return await list_letters(redis, prefix, sink, query, limit=sys.maxsize)
        moved = await replay_letters(redis, prefix, sink, query, rate=rate or None, keep=keep)
        if no_wait or not moved.events:
            return moved
        click.echo(
            f"replaying {moved.events} events from {moved.entries} dead-letter entries to "
            f"{sink}" + (f" at {rate:g} events/s" if rate else "")
        )
        with click.progressbar(
            length=moved.events, label="delivered or dead-lettered again", file=sys.stderr
        ) as bar:
            shown = 0
            moved_at = time.monotonic()
            hinted = False
            while True:
                progress = await replay_progress(redis, prefix, sink, moved.replay_entries)
                if progress.settled != shown:
                    moved_at = time.monotonic()
                bar.update(progress.settled - shown)
                shown = progress.settled
                if progress.done:
                    break
                if not hinted and time.monotonic() - moved_at > STALL_HINT_SECONDS:
                    hinted = True
                    click.echo(
                        f"\nnothing settled for {STALL_HINT_SECONDS:g}s: is a worker delivering "
                        f"{sink} (`signalsmith worker`)? The replay waits for one; Ctrl-C "
                        "stops following it.",
                        err=True,
                    )
                await asyncio.sleep(PROGRESS_POLL_SECONDS)
        return moved

    try:
        result = _run(ctx, action)
    except KeyboardInterrupt:
        raise click.ClickException(
            "stopped following the replay; it goes on in the worker (`signalsmith dlq list` "
            "shows what fails again)"
        ) from None
    if dry_run:
        count = sum(letter.count for letter in result)
        click.echo(f"would replay {count} events from {len(result)} dead-letter entries to {sink}")
        return
    if not result.events:
        click.echo(f"no dead letters for {sink} match; nothing replayed")
        return
    if no_wait:
        click.echo(
            f"queued {result.events} events from {result.entries} entries for {sink}; a worker "
            "delivers them"
        )
        return
    click.echo(
        f"replayed {result.events} events to {sink}; any that failed again are back in its dead "
        f"letters (`signalsmith dlq list {sink}`)"
    )


@dlq.command("drop")
@click.argument("sink")
@_filters
@click.option("--id", "ids", multiple=True, help="Only this entry (repeatable).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def drop_command(
    ctx: click.Context,
    sink: str,
    since: datetime | None,
    until: datetime | None,
    event: str | None,
    error: str | None,
    ids: tuple[str, ...],
    yes: bool,
) -> None:
    """Delete SINK's dead-lettered events (the ones selected) for good."""
    query = _query(since, until, event, error, ids)
    if not yes and query == LetterQuery():
        click.confirm(f"delete every dead letter of {sink}?", abort=True)

    async def action(runtime: Runtime) -> Any:
        return await drop_letters(runtime.redis, runtime.settings.key_prefix, sink, query)

    moved = _run(ctx, action)
    click.echo(
        f"dropped {moved.events} events ({moved.entries} entries) from {sink}'s dead letters"
    )


__all__ = ["dlq"]
