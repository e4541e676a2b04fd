"""The ``signalsmith keys`` commands: create, list, show, revoke, rotate, set-plan.

They talk to Redis directly (the same store the admin API uses), so they work whether or not a
collector is running, and every change reaches running collectors through the changes channel.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from signalsmith_auth_writekey.keys import (
    DEFAULT_GRACE_SECONDS,
    InvalidSourceName,
    KeyConflict,
    KeyInfo,
    KeyNotFound,
    KeyStore,
    check_source_name,
    store_for,
)
from signalsmith_auth_writekey.plans import DEFAULT_PLAN, PLANS, InvalidPlan, limits_for

if TYPE_CHECKING:
    from signalsmith import Runtime

T = TypeVar("T")

LIST_COLUMNS = ["source", "prefix", "plan", "rate", "burst", "state", "created", "last_used"]
_DURATION = re.compile(r"(\d+)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    """Seconds, written as 90, 90s, 15m, 24h or 7d."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION.fullmatch(str(value).strip().lower())
        if match is None:
            self.fail(f"{value!r} is not a duration: write 90, 90s, 15m, 24h or 7d", param, ctx)
        return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _row(info: KeyInfo) -> dict[str, str]:
    state = info.state
    if info.state == "expiring":
        state = f"expiring {_when(info.expires_at)}"
    return {
        "source": info.source,
        "prefix": f"{info.prefix}...",
        "plan": info.plan,
        "rate": f"{info.rate}/s",
        "burst": str(info.burst),
        "state": state,
        "created": _when(info.created_at),
        "last_used": _when(info.last_used_at),
    }


def _describe(info: KeyInfo) -> str:
    lines = [
        ("prefix", f"{info.prefix}..."),
        ("source", info.source),
        ("plan", info.plan),
        ("rate", f"{info.rate} events/s"),
        ("burst", f"{info.burst} events"),
        ("state", info.state),
        ("created", _when(info.created_at)),
        ("last used", _when(info.last_used_at)),
    ]
    if info.expires_at is not None:
        lines.append(("expires", _when(info.expires_at)))
    if info.revoked_at is not None:
        lines.append(("revoked", _when(info.revoked_at)))
    if info.replaced_by:
        lines.append(("replaced by", f"{info.replaced_by}..."))
    if info.replaces:
        lines.append(("replaces", f"{info.replaces}..."))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in lines)


def _json(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value)).decode()


def register_key_commands(cli: click.Group) -> None:
    """Add the ``keys`` group to the ``signalsmith`` CLI."""
    from signalsmith import print_table, run_with_runtime, settings_of

    def run(ctx: click.Context, action: Callable[[KeyStore], Awaitable[T]]) -> T:
        async def with_store(runtime: Runtime) -> T:
            return await action(store_for(runtime))

        try:
            return run_with_runtime(settings_of(ctx), with_store)
        except (KeyNotFound, KeyConflict) as error:
            raise click.ClickException(str(error)) from error

    def check_limits(plan: str, rate: int | None, burst: int | None) -> None:
        # Checked before connecting, so a typo does not start an embedded Redis first.
        try:
            limits_for(plan, rate, burst)
        except InvalidPlan as error:
            raise click.UsageError(str(error)) from error

    plan_option = click.option(
        "--plan",
        type=click.Choice(list(PLANS)),
        help="free: 100 events/s, bursts of 500; pro: 1,000/s, 5,000; enterprise: --rate and "
        "--burst of the key's own.",
    )
    rate_option = click.option(
        "--rate", type=click.IntRange(min=1), help="Events per second (enterprise, at least 10000)."
    )
    burst_option = click.option(
        "--burst", type=click.IntRange(min=1), help="Events accepted at once (enterprise)."
    )

    @cli.group()
    def keys() -> None:
        """Manage write keys. A key is shown once, when made; afterwards only its prefix."""

    @keys.command("create")
    @click.option("--source", "source_name", required=True, help="The source the key opens.")
    @plan_option
    @rate_option
    @burst_option
    @click.pass_context
    def create(
        ctx: click.Context,
        source_name: str,
        plan: str | None,
        rate: int | None,
        burst: int | None,
    ) -> None:
        """Create a write key for a source and print it, once."""
        try:
            check_source_name(source_name)
        except InvalidSourceName as error:
            raise click.BadParameter(str(error), param_hint="--source") from error
        plan = plan or DEFAULT_PLAN
        check_limits(plan, rate, burst)

        async def action(store: KeyStore) -> tuple[str, KeyInfo]:
            plaintext, record = await store.create(source_name, plan=plan, rate=rate, burst=burst)
            return plaintext, KeyInfo.of(record)

        plaintext, info = run(ctx, action)
        click.echo(
            f"Created a write key for source {source_name!r} (plan {info.plan}: "
            f"{info.rate} events/s, bursts of {info.burst}):\n"
        )
        click.echo(f"    {plaintext}\n")
        click.echo(
            "Copy it now: it cannot be shown again (only its SHA-256 hash is stored). "
            "If it is lost, create another with `signalsmith keys create`."
        )

    @keys.command("list")
    @click.option("--source", "source_name", help="Only this source's keys.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.pass_context
    def list_keys(ctx: click.Context, source_name: str | None, as_json: bool) -> None:
        """List write keys: source, prefix, plan, limits, state, created, last used."""
        infos = run(ctx, lambda store: store.infos(source_name))
        if as_json:
            click.echo(_json(infos))
            return
        if not infos:
            click.echo(
                "No write keys yet; create one with `signalsmith keys create --source NAME`."
            )
            return
        print_table([_row(info) for info in infos], LIST_COLUMNS)

    @keys.command("show")
    @click.argument("key", metavar="KEY")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def show(ctx: click.Context, key: str, as_json: bool) -> None:
        """Show one write key. KEY is its prefix as listed (or the whole key)."""
        info = run(ctx, lambda store: store.info(key))
        click.echo(_json(info) if as_json else _describe(info))

    @keys.command("revoke")
    @click.argument("key", metavar="KEY")
    @click.pass_context
    def revoke(ctx: click.Context, key: str) -> None:
        """Revoke a write key: every collector refuses it within a second."""

        async def action(store: KeyStore) -> KeyInfo:
            return KeyInfo.of(await store.revoke(key))

        info = run(ctx, action)
        click.echo(
            f"Revoked write key {info.prefix}... of source {info.source!r} "
            f"(at {_when(info.revoked_at)})."
        )

    @keys.command("rotate")
    @click.argument("key", metavar="KEY")
    @click.option(
        "--grace",
        type=Duration(),
        default=f"{DEFAULT_GRACE_SECONDS // 3600}h",
        show_default=True,
        help="How long the old key is still accepted: 0, 90s, 15m, 24h, 7d.",
    )
    @click.pass_context
    def rotate(ctx: click.Context, key: str, grace: int) -> None:
        """Replace a write key with a new one; the old one works for the grace period."""

        async def action(store: KeyStore) -> tuple[str, KeyInfo, KeyInfo]:
            plaintext, new, old = await store.rotate(key, grace)
            return plaintext, KeyInfo.of(new), KeyInfo.of(old)

        plaintext, new, old = run(ctx, action)
        click.echo(f"Rotated write key {old.prefix}... of source {new.source!r}. The new key:\n")
        click.echo(f"    {plaintext}\n")
        click.echo(
            f"The old key is accepted until {_when(old.expires_at)} ({grace} s), then refused. "
            "Copy the new key now: it cannot be shown again."
        )

    @keys.command("set-plan")
    @click.argument("key", metavar="KEY")
    @click.option(
        "--plan",
        type=click.Choice(list(PLANS)),
        required=True,
        help="free: 100 events/s, bursts of 500; pro: 1,000/s, 5,000; enterprise: --rate and "
        "--burst of the key's own.",
    )
    @rate_option
    @burst_option
    @click.pass_context
    def set_plan(
        ctx: click.Context, key: str, plan: str, rate: int | None, burst: int | None
    ) -> None:
        """Move a write key to another plan; its next request gets the new limits."""
        check_limits(plan, rate, burst)

        async def action(store: KeyStore) -> KeyInfo:
            return KeyInfo.of(await store.set_plan(key, plan, rate=rate, burst=burst))

        info = run(ctx, action)
        click.echo(
            f"Write key {info.prefix}... of source {info.source!r} is on plan {info.plan}: "
            f"{info.rate} events/s, bursts of {info.burst}."
        )
