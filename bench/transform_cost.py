"""What transforms cost: each transform type per event, and the ingest figure with a chain of
five on one source beside the same collector without transforms, in one run.

    .venv/bin/python bench/transform_cost.py                       # both parts, prints Markdown
    .venv/bin/python bench/transform_cost.py --micro-only          # per transform, ~1 min
    .venv/bin/python bench/transform_cost.py --ingest-only --rounds 3 --seconds 10

**Per transform** (in this process): each instance is checked and built from a workspace
document as a collector builds it, then its function is called on realistic 100-event batches
(70 track events of five names, some with legacy names and UTM properties, 20 pages, 10
identifies with emails; 30 distinct browser user agents, 3 of them crawlers; 200 users; IPs in
and out of the test MaxMind DB). The same batch is used again and again (transforms never change
their input), so caches are warm, as they are in a collector after its first seconds; cold
figures (a user agent parsed, a lookup made) are given apart. The figure is wall time per event
of the transform's call, with nothing else running in the process.

**Ingest** (``bench/ingest.py``'s machinery: a private Redis with AOF everysec, wrk closed loop,
a fresh server per run, targets alternating every round): the ``batch100`` scenario, its event
given a browser user agent, sent to three collectors that differ only in the workspace applied
before each run: ``collector`` (none), ``collector-no-transforms`` (a workspace whose source
lists no transform) and ``collector-five`` (the source runs rename, enrich, filter, properties
and function, with the lookup served by a local HTTP server and cached). Every event is kept, so
the run still checks stored = accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from mmdb_writer import MMDBWriter  # noqa: E402
from netaddr import IPSet  # noqa: E402

from signalsmith import Outcome, Source  # noqa: E402
from signalsmith.testing.transforms import build_chains, events_of  # noqa: E402

RESULTS_HEADING = "## Transforms"
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{v} Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/1{v}.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:12{v}.0) Gecko/20100101 Firefox/12{v}.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:12{v}.0) Gecko/20100101 Firefox/12{v}.0",
]
CRAWLERS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
]
FUNCTION_MODULE = """
def transform_event(event, ctx):
    properties = event.get("properties")
    if properties is not None:
        properties["scored"] = len(properties)
    return event
"""


def geo_database(directory: Path) -> Path:
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(
        IPSet(["81.2.69.0/24", "203.0.113.0/24"]),
        {
            "city": {"names": {"en": "London"}},
            "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
            "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
            "location": {"latitude": 51.5142, "longitude": -0.0931, "time_zone": "Europe/London"},
        },
    )
    path = directory / "city.mmdb"
    writer.to_db_file(str(path))
    return path


class LookupService:
    """A local CRM answering every user with a small JSON object."""

    def __init__(self) -> None:
        self.requests = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.requests += 1
                body = json.dumps({"plan": "pro", "seats": 5, "region": "eu"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def transforms_yaml(database: Path, lookup_url: str, function: str) -> str:
    """The five instances, as a realistic workspace declares them."""
    return textwrap.dedent(
        f"""\
        rename:
          type: rename
          settings:
            events: [{{from: Checkout Done, to: Order Completed}}]
            fields: [{{from: properties.total, to: properties.revenue, types: [track]}}]
            keys: [{{in: properties, match: 'utm_(.+)', to: 'campaign_\\1'}}]
        enrich:
          type: enrich
          settings:
            user_agent: {{}}
            geo: {{database: "{database}"}}
            lookup:
              url: "{lookup_url}/users/{{key}}"
              to: context.crm
              allow_networks: ["127.0.0.0/8"]
        filter:
          type: filter
          settings: {{drop: 'context.device.type = "bot" or match(context.traits.email, "*@example.internal")'}}
        properties:
          type: properties
          settings:
            add: {{properties.channel: web, properties.plan: "{{{{ context.crm.plan }}}}"}}
            remove: [context.ip]
            hash: {{fields: [traits.email, context.traits.email], salt: "${{PII_SALT}}"}}
            cap: {{max_length: 256}}
        function:
          type: function
          settings: {{function: "{function}:transform_event"}}
        """
    )


def workspace(source: str, chain: Sequence[str], transforms: str) -> str:
    return (
        f"version: 1\nsources:\n  {source}: {{transforms: [{', '.join(chain)}]}}\ntransforms:\n"
        + textwrap.indent(transforms, "  ")
    )


# --- per transform ---------------------------------------------------------------------------


def realistic_batch(seed: int = 0) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    agents = [ua.format(v=v) for ua in USER_AGENTS for v in range(1, 5)][:27] + CRAWLERS
    messages: list[dict[str, Any]] = []
    names = ["Order Completed", "Product Viewed", "Product Added", "Checkout Done", "Signed Up"]
    for index in range(100):
        user = f"user-{rng.randrange(200):04d}"
        context = {
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "userAgent": rng.choice(agents),
            "ip": f"81.2.69.{rng.randrange(256)}"
            if rng.random() < 0.8
            else f"198.51.100.{rng.randrange(256)}",
            "locale": "en-US",
            "page": {
                "path": "/checkout",
                "url": "https://shop.example.com/checkout",
                "title": "Checkout",
            },
        }
        base = {
            "messageId": f"bench-{seed}-{index}",
            "userId": user,
            "anonymousId": f"anon-{user}",
            "context": context,
        }
        if index < 70:
            properties: dict[str, Any] = {
                "orderId": f"ord-{index}",
                "total": 119.97,
                "currency": "USD",
                "products": [{"sku": "sku-1", "price": 39.99, "quantity": 3}],
            }
            if index % 4 == 0:
                properties.update({"utm_source": "newsletter", "utm_medium": "email"})
            messages.append(
                {
                    "type": "track",
                    "event": names[index % len(names)],
                    "properties": properties,
                    **base,
                }
            )
        elif index < 90:
            messages.append(
                {"type": "page", "name": "Checkout", "properties": {"path": "/checkout"}, **base}
            )
        else:
            messages.append(
                {
                    "type": "identify",
                    "traits": {"email": f"{user}@mail.example.com", "plan": "pro"},
                    **base,
                }
            )
    return messages


def time_per_event(apply: Callable[..., Any], events: list[Any], seconds: float) -> float:
    """Median CPU µs per event of ``apply(source, events)`` over 7 samples of ~``seconds`` / 7.

    CPU time of the whole process (the function transform's worker thread included), not wall
    time: on a shared machine other people's work stretches wall time, not this.
    """
    source = Source(id="bench", name="bench")
    loop = asyncio.new_event_loop()

    def once() -> None:
        result = apply(source, events)
        if asyncio.iscoroutine(result):
            loop.run_until_complete(result)

    once()  # warm: caches, the lookup's client
    samples = []
    for _ in range(7):
        count, started, wall = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - wall < seconds / 7:
            once()
            count += 1
        samples.append((time.process_time() - started) / count / len(events) * 1e6)
    loop.close()
    return statistics.median(samples)


def _handed_on(chain: Sequence[Any], events: list[Any]) -> list[Any]:
    """The batch as ``chain`` hands it on (what the next transform is given)."""
    source = Source(id="bench", name="bench")
    loop = asyncio.new_event_loop()
    for transform in chain:
        result = transform.apply(source, events)
        if asyncio.iscoroutine(result):
            result = loop.run_until_complete(result)
        if result is not None:
            events = result.events
    loop.close()
    return events


def micro(seconds: float, directory: Path) -> list[tuple[str, float, str]]:
    import os

    database = geo_database(directory)
    (directory / "bench_function.py").write_text(FUNCTION_MODULE)
    sys.path.insert(0, str(directory))
    os.environ.setdefault("PII_SALT", "bench-salt")
    service = LookupService()
    transforms = transforms_yaml(database, service.url, "bench_function")
    names = ["rename", "enrich", "filter", "properties", "function"]
    plugins = _transform_plugins()
    events = events_of(realistic_batch(), "bench")
    rows: list[tuple[str, float, str]] = []
    chain = build_chains(workspace("bench", names, transforms), *plugins, environ=os.environ)[
        "bench"
    ]
    for position, transform in enumerate(chain):
        # Each transform is given the batch as the ones before it hand it on, as in a chain.
        given = _handed_on(chain[:position], events)
        rows.append(
            (
                transform.name,
                time_per_event(transform.apply, given, seconds),
                "on the batch the ones above hand on; warm caches",
            )
        )

    def run_chain(source: Source, batch: list[Any]) -> Any:
        async def go() -> None:
            current = batch
            for transform in chain:
                result = transform.apply(source, current)
                if asyncio.iscoroutine(result):
                    result = await result
                if result is not None:
                    current = result.events

        return go()

    rows.append(
        ("the five, chained", time_per_event(run_chain, events, seconds), "in the order above")
    )
    # Pieces, cold and apart.
    one_each = textwrap.dedent(
        """\
        ua-cold: {type: enrich, settings: {user_agent: {cache_size: 0}}}
        ua-warm: {type: enrich, settings: {user_agent: {}}}
        geo-only: {type: enrich, settings: {geo: {database: "DB"}}}
        """
    ).replace("DB", str(database))
    for name, note in [
        ("ua-cold", "every user agent parsed (cache_size: 0)"),
        ("ua-warm", "cache hits"),
        ("geo-only", "maxminddb lookups, cached by IP"),
    ]:
        [transform] = build_chains(workspace("bench", [name], one_each), *plugins)["bench"]
        rows.append((f"enrich: {name}", time_per_event(transform.apply, events, seconds), note))
    cold_lookup = textwrap.dedent(
        f"""\
        lookup-cold:
          type: enrich
          settings: {{lookup: {{url: "{service.url}/users/{{key}}", cache_seconds: 0, allow_networks: ["127.0.0.0/8"]}}}}
        """
    )
    [transform] = build_chains(workspace("bench", ["lookup-cold"], cold_lookup), *plugins)["bench"]
    rows.append(
        (
            "enrich: lookup, no cache",
            time_per_event(transform.apply, events, seconds),
            "a request per distinct user per batch, to a local Python http.server (a connection per request)",
        )
    )
    outcome_cost = _outcome_cost(events)
    rows.append(
        ("one Outcome built", outcome_cost, "what reporting a change costs per changed event")
    )
    service.server.shutdown()
    return rows


def _outcome_cost(events: list[Any]) -> float:
    started = time.perf_counter()
    rounds = 200
    for _ in range(rounds):
        [
            Outcome(
                stage="transform",
                status="transformed",
                message_id=event.message_id,
                source_id="bench",
                reason="rename",
                detail="renamed event 'Checkout Done' -> 'Order Completed'",
                event=event,
            )
            for event in events
        ]
    return (time.perf_counter() - started) / rounds / len(events) * 1e6


def _transform_plugins() -> list[Any]:
    from signalsmith_transform_enrich import plugin as enrich
    from signalsmith_transform_filter import plugin as filtering
    from signalsmith_transform_function import plugin as function
    from signalsmith_transform_properties import plugin as properties
    from signalsmith_transform_rename import plugin as rename

    return [
        (rename, "transform-rename"),
        (enrich, "transform-enrich"),
        (filtering, "transform-filter"),
        (properties, "transform-properties"),
        (function, "transform-function"),
    ]


# --- ingest --------------------------------------------------------------------------------------


def ingest(
    rounds: int,
    seconds: float,
    warmup: float,
    placement_name: str,
    directory: Path,
    log: Callable[[str], None],
) -> tuple[list[Any], dict[str, Any]]:
    import ingest as bench_ingest
    import ingest_payloads
    from redis import asyncio as aioredis

    from signalsmith.hooks import Hooks
    from signalsmith.testing import plugin_manager
    from signalsmith.workspace import DocumentText, Registry, WorkspaceStore
    from signalsmith.workspace.operations import apply

    # The bench's event, with a browser's user agent (every target gets the same body).
    plain_track_event = ingest_payloads.track_event

    def track_event(message_id: str, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        event = plain_track_event(message_id, extra=extra)
        event["context"] = {**event["context"], "userAgent": USER_AGENTS[0].format(v=120)}
        return event

    ingest_payloads.track_event = track_event
    database = geo_database(directory)
    (directory / "bench_function.py").write_text(FUNCTION_MODULE)
    service = LookupService()
    transforms = transforms_yaml(database, service.url, "bench_function")
    documents = {
        "collector": None,
        "collector-no-transforms": workspace("bench", [], transforms),
        "collector-five": workspace(
            "bench", ["rename", "enrich", "filter", "properties", "function"], transforms
        ),
    }
    sys.path.insert(0, str(directory))
    registry = Registry.from_hooks(Hooks(plugin_manager(*_transform_plugins())))
    collector_env = {
        "PYTHONPATH": str(directory),
        "PII_SALT": "bench-salt",
    }

    class WorkspaceBuffer(bench_ingest.Buffer):
        target = "collector"

        def create_write_key(self) -> str:
            key = super().create_write_key()
            document = documents[self.target]
            if document is not None:

                async def put() -> None:
                    client = aioredis.Redis.from_url(self.server.url)
                    try:
                        store = WorkspaceStore(
                            client, lambda *parts: ":".join((bench_ingest.KEY_PREFIX, *parts))
                        )
                        await apply(
                            store, registry, DocumentText(text=document), applied_by="bench"
                        )
                    finally:
                        await client.aclose()

                asyncio.run(put())
            return key

    class WorkspaceBench(bench_ingest.Bench):
        def measure(
            self, placement: Any, round_number: int, scenario: Any, target: str, *, rate: float = 0
        ) -> Any:
            self.buffer.target = target  # type: ignore[attr-defined]
            return super().measure(placement, round_number, scenario, target, rate=rate)

    placement = bench_ingest.PLACEMENTS[placement_name]
    scenario = bench_ingest.SCENARIOS["batch100"]
    targets = list(documents)
    with bench_ingest.fresh_redis(directory, aof=True) as (plain_buffer, redis_version):
        buffer = WorkspaceBuffer(plain_buffer.server)
        bench = WorkspaceBench(
            buffer=buffer,
            workdir=directory,
            seconds=seconds,
            warmup=warmup,
            connections=64,
            collector_env=collector_env,
        )
        runs = bench_ingest.run_placement(
            bench, placement, [scenario], targets, rounds, latency=False, log=log
        )
    service.server.shutdown()
    meta = {
        "redis": redis_version,
        "placement": placement,
        "lookups": service.requests,
        "plugins": bench.plugins,
    }
    return runs, meta


def ingest_table(runs: Sequence[Any]) -> list[str]:
    lines = [
        "| target | events/s (max), median (min-max) | / collector, paired by round | server CPU µs/event | Redis CPU µs/event | stored = accepted |",
        "|---|---|---|---|---|---|",
    ]
    by_target: dict[str, list[Any]] = {}
    for run in runs:
        by_target.setdefault(run.target, []).append(run)
    for target, mine in by_target.items():
        rates = [r.events_per_s for r in mine]
        ratios = []
        for run in mine:
            [plain] = [r for r in runs if r.target == "collector" and r.round == run.round]
            ratios.append(run.events_per_s / plain.events_per_s)
        lines.append(
            f"| {target} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {statistics.median(r.cpu_us_per_event for r in mine):.1f} "
            f"| {statistics.median(r.redis_cpu_us_per_event for r in mine):.1f} "
            f"| {sum(r.verified for r in mine)}/{len(mine)} runs |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro-only", action="store_true")
    parser.add_argument("--ingest-only", action="store_true")
    parser.add_argument("--micro-seconds", type=float, default=3.0, help="per measured transform")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--placement", default="pinned", choices=("pinned", "shared"))
    args = parser.parse_args(argv)
    command = "python bench/transform_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = [f"### {datetime.now(UTC):%Y-%m-%d}", "", f"Command: `{command.strip()}`.", ""]
    with tempfile.TemporaryDirectory(prefix="ss-transform-bench-") as temporary:
        directory = Path(temporary)
        if not args.ingest_only:
            rows = micro(args.micro_seconds, directory)
            out += [
                "Per transform, CPU time per event of the instance's call on a realistic 100-event batch (median of 7 samples):",
                "",
                "| transform | µs/event | note |",
                "|---|---:|---|",
                *(f"| {name} | {cost:.2f} | {note} |" for name, cost, note in rows),
                "",
            ]
            print("\n".join(out), flush=True)
        if not args.micro_only:
            runs, meta = ingest(
                args.rounds,
                args.seconds,
                args.warmup,
                args.placement,
                directory,
                lambda line: print(line, flush=True),
            )
            out += [
                f"Ingest, `batch100` with a browser user agent, placement **{args.placement}** "
                f"({meta['placement'].description}); {args.rounds} alternating rounds of "
                f"{args.seconds:g} s after {args.warmup:g} s of warm-up; {meta['redis']}; plugins: "
                f"{', '.join(meta['plugins'])}; lookups made by the chain: {meta['lookups']}:",
                "",
                *ingest_table(runs),
                "",
            ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
