"""``signalsmith contracts``: import plans, test them offline, draft one from the warehouse, and
read what running plans did (violations, shadow reports)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec

from signalsmith import AdminClient, Event, Runtime, print_table, run_with_runtime, settings_of
from signalsmith_contracts.compiled import PlanError, compile_plan, plan_digest
from signalsmith_contracts.enforce import Enforcer
from signalsmith_contracts.plans import PlanProblem, ReadPlan, encode_plan, read_plan
from signalsmith_contracts.report import (
    ShadowReport,
    ViolationsReport,
    parse_duration,
    shadow_report,
    violations_report,
)
from signalsmith_contracts.schema import render_path
from signalsmith_contracts.settings import (
    CommonHandling,
    PropertiesHandling,
    SourceContract,
    TrackHandling,
    TraitsHandling,
)
from signalsmith_contracts.store import ContractsStore, violations_maxlen


class UnusableInput(click.ClickException):
    """A plan or an events file that cannot be read: exit code 2 (1 is for violations)."""

    exit_code = 2


def read_plan_file(path: Path, name: str = "") -> ReadPlan:
    """A plan from a JSON export, or from rudder-cli YAML (a directory or a .yaml file)."""
    try:
        if path.is_dir() or path.suffix.lower() in (".yaml", ".yml"):
            from signalsmith_contracts.rudder_cli import read_rudder_cli

            return read_rudder_cli(path, name=name)
        try:
            value = msgspec.json.decode(path.read_bytes())
        except msgspec.DecodeError as error:
            raise UnusableInput(f"{path}: not JSON: {error}") from None
        return read_plan(value, name=name)
    except OSError as error:
        raise UnusableInput(f"{path}: {error.strerror or error}") from None
    except PlanProblem as problem:
        where = f" at {render_path(problem.path)}" if problem.path else ""
        raise UnusableInput(f"{path}{where}: {problem.message}") from None


def compiled_plan(read: ReadPlan, path: Path, name: str) -> Any:
    try:
        return compile_plan(name, read, plan_digest(read))
    except PlanError as error:
        raise UnusableInput(f"{path} at {render_path(error.path)}: {error.message}") from None


@click.group()
def contracts() -> None:
    """Tracking plans: import them, test them, draft one, and see what they did."""


@contracts.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--name", default="", help="The plan's name (default: the one in the file).")
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), help="Write the plan here (default: stdout)."
)
def import_plan(source: Path, name: str, output: Path | None) -> None:
    """Convert a tracking plan exported from Segment or RudderStack into SignalSmith's format.

    SOURCE is a Segment Public API plan or rules JSON (bare or {"data": ...}), a Typewriter
    plan.json, a Config API plan, a RudderStack Data Catalog plan JSON, or a rudder-cli YAML
    directory. The result is Segment Public API rules; put it beside signalsmith.yaml and name
    it under `contracts:` (`shop: {$include: plans/shop.json}`).
    """
    read = read_plan_file(source, name)
    compiled_plan(read, source, read.plan.name or source.stem)
    text = encode_plan(read.plan)
    counts: dict[str, int] = {}
    for rule in read.plan.rules:
        counts[rule.type] = counts.get(rule.type, 0) + 1
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items())) or "no rules"
    if output is None:
        sys.stdout.write(text.decode())
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(text)
    click.echo(f"read {source} as {read.format}: plan {read.plan.name!r}, {summary}", err=True)


def _event_of(line: str, number: int, now: str) -> Event:
    """A line as the collector would hold it: ids and times filled in where it has none."""
    message = msgspec.json.decode(line)
    if not isinstance(message, dict):
        raise ValueError("a line is one Segment message (a JSON object)")
    body = {"messageId": f"line-{number}", "receivedAt": now, "timestamp": now, **message}
    return msgspec.convert(body, Event, strict=False)


@contracts.command("test")
@click.argument("plan", type=click.Path(exists=True, path_type=Path))
@click.argument("events", type=click.File("r"))
@click.option(
    "--unplanned-events",
    type=click.Choice(["allow", "block"]),
    default="block",
    show_default=True,
    help="What a track event the plan does not list does.",
)
@click.option(
    "--unplanned-properties",
    type=click.Choice(["allow", "omit"]),
    default="allow",
    show_default=True,
    help="What unplanned properties and traits do.",
)
@click.option(
    "--violations",
    type=click.Choice(["allow", "omit", "block"]),
    default="block",
    show_default=True,
    help="What an event that breaks its rule (or the common rule) does.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary.")
def test_plan(
    plan: Path,
    events: Any,
    unplanned_events: str,
    unplanned_properties: str,
    violations: str,
    quiet: bool,
) -> None:
    """Run PLAN over the events in EVENTS (JSON lines, one Segment message each), offline.

    Exit code 0 when every event passes untouched, 1 when any would be blocked or has a
    violation, 2 when the plan or a line cannot be read: a CI step.
    """
    read = read_plan_file(plan)
    compiled = compiled_plan(read, plan, read.plan.name or plan.stem)
    contract = SourceContract(
        plan=compiled.name if compiled.name else "plan",
        track=TrackHandling(
            unplanned_events=unplanned_events,  # type: ignore[arg-type]
            unplanned_properties=unplanned_properties,  # type: ignore[arg-type]
            violations=violations,  # type: ignore[arg-type]
        ),
        identify=TraitsHandling(unplanned_traits=unplanned_properties, violations=violations),  # type: ignore[arg-type]
        group=TraitsHandling(unplanned_traits=unplanned_properties, violations=violations),  # type: ignore[arg-type]
        page=PropertiesHandling(unplanned_properties=unplanned_properties, violations=violations),  # type: ignore[arg-type]
        screen=PropertiesHandling(unplanned_properties=unplanned_properties, violations=violations),  # type: ignore[arg-type]
        common=CommonHandling(violations=violations),  # type: ignore[arg-type]
    )
    enforcer = Enforcer("test", compiled, contract)
    tallies = {"passed": 0, "allowed": 0, "omitted": 0, "blocked": 0}
    now = datetime.now(UTC).isoformat()
    for number, line in enumerate(events, start=1):
        if not line.strip():
            continue
        try:
            event = _event_of(line, number, now)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
            raise UnusableInput(
                f"{events.name} line {number}: not a Segment message: {error}"
            ) from None
        judgement = enforcer.judge(event)
        action = judgement.action if judgement is not None else "passed"
        tallies[action] += 1
        if judgement is None or quiet:
            continue
        label = getattr(event, "event", None) or getattr(event, "name", None) or event.type
        click.echo(f"line {number} ({event.type} {label!r}): {action}")
        for violation in judgement.violations:
            click.echo(f"  {violation.type}: {violation.field}: {violation.description}")
        for path in (*judgement.omitted, *judgement.omitted_on_violation):
            click.echo(f"  omitted {render_path(path)}")
    total = sum(tallies.values())
    click.echo(
        f"{total} events: {tallies['passed']} passed, {tallies['allowed']} allowed with "
        f"violations, {tallies['omitted']} with properties omitted, {tallies['blocked']} blocked"
    )
    if total != tallies["passed"]:
        sys.exit(1)


@contracts.command("violations")
@click.option("--since", default="1h", show_default=True, help="The window: 1h, 24h, 7d...")
@click.option("--source", default=None, help="Only this source.")
@click.option("--samples", default=1, show_default=True, help="Sample payloads per row (json).")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def violations(
    ctx: click.Context, since: str, source: str | None, samples: int, output: str
) -> None:
    """Violations per source, event and rule over the last SINCE, from the violations stream."""
    try:
        seconds = parse_duration(since)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None

    async def read(runtime: Runtime) -> ViolationsReport:
        store = ContractsStore(runtime, violations_maxlen())
        return await violations_report(store, seconds, source=source, samples=samples)

    report = run_with_runtime(settings_of(ctx), read)
    if output == "json":
        click.echo(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
        return
    print_table(
        [
            {
                "source": group.source,
                "event": group.event_name or group.event_type,
                "type": group.type,
                "field": group.field,
                "count": group.count,
                "blocked": group.blocked,
                "last seen": group.last_seen,
            }
            for group in report.groups
        ],
        ["source", "event", "type", "field", "count", "blocked", "last seen"],
    )
    click.echo(
        f"{report.events} events with violations in the last {since}, {report.blocked} blocked"
    )
    if report.oldest_record is not None:
        click.echo(
            f"the violations stream holds records from {report.oldest_record} on; the "
            "warehouse's violations table has older ones",
            err=True,
        )


@contracts.command("shadow-report")
@click.option("--source", default=None, help="Only this source.")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def shadow(ctx: click.Context, source: str | None, output: str) -> None:
    """What each source's shadow plan would have done to the events it saw, beside the plan
    it enforces: per event name, how many it would block or omit properties of."""

    async def read(runtime: Runtime) -> ShadowReport:
        store = ContractsStore(runtime, violations_maxlen())
        return await shadow_report(runtime, store, source=source)

    report = run_with_runtime(settings_of(ctx), read)
    if output == "json":
        click.echo(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
        return
    if not report.rows:
        click.echo("no shadow plan has seen events (set `shadow: PLAN` in a source's contract)")
        return
    print_table(
        [
            {
                "source": row.source,
                "plan -> shadow": f"{row.enforced_plan} -> {row.shadow_plan}",
                "event": row.event_name or row.event_type,
                "seen": row.seen,
                "would block": row.shadow.get("blocked", 0),
                "would omit": row.shadow.get("omitted", 0),
                "would allow with violations": row.shadow.get("allowed", 0),
                "blocked now": row.enforced.get("blocked", 0),
                "omitted now": row.enforced.get("omitted", 0),
            }
            for row in report.rows
        ],
        [
            "source",
            "plan -> shadow",
            "event",
            "seen",
            "would block",
            "would omit",
            "would allow with violations",
            "blocked now",
            "omitted now",
        ],
    )
    for row in report.rows:
        for sample in row.samples:
            click.echo(
                f"  {row.event_name or row.event_type}: {sample.action} {sample.message_id}: {sample.reason}"
            )


@contracts.command("infer")
@click.option("--source", required=True, help="The source whose events to draft a plan from.")
@click.option("--name", default="", help="The drafted plan's name.")
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), help="Write it here (default: stdout)."
)
@click.pass_context
def infer(ctx: click.Context, source: str, name: str, output: Path | None) -> None:
    """Draft a plan from SOURCE's events in the warehouse: the types seen, and `required` for
    what every event had. Reads through the running server's admin API (`signalsmith sql`)."""
    from signalsmith_contracts.infer import infer_plan

    logging.getLogger("httpx").setLevel(logging.WARNING)
    admin = AdminClient.for_local_server(settings_of(ctx))
    if admin is None:
        raise click.ClickException(
            "no running server found for this data directory: `contracts infer` reads the "
            "warehouse through the admin API of `signalsmith serve` (or the process that runs "
            "the worker); start it here, or run this where it runs"
        )

    def query(sql: str) -> tuple[list[str], list[list[Any]]]:
        response = admin.request("POST", "/sql", json={"sql": sql, "limit": 10000})
        if response.status_code != 200:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise click.ClickException(f"the warehouse refused {sql!r}: {message}")
        body = response.json()
        return body["columns"], body["rows"]

    try:
        plan = infer_plan(query, source, name=name)
    finally:
        admin.close()
    text = encode_plan(plan)
    if output is None:
        sys.stdout.write(text.decode())
    else:
        output.write_bytes(text)
    click.echo(f"drafted {len(plan.rules)} rules from source {source!r}", err=True)
