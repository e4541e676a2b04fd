"""End-to-end latency and sustained throughput, for bench/ingest.py (``--e2e``).

End-to-end latency: a steady paced load (wrk) runs against ``signalsmith serve`` on the embedded
layout (the collector and the worker in one process, which alone may hold an embedded chDB
warehouse), while probe events, one /v1/track request each, are sent beside it. For each probe:

- to the destination: from its 200 to its arrival at a local HTTP receiver, posted there by the
  bench-only destination plugin (bench/http_destination_plugin.py) through the real worker;
- to the warehouse: from its 200 to the first moment a query (``POST /api/v1/admin/sql``, the
  warehouse plugin's own read path, polled every ``POLL_SECONDS``) finds it in ``tracks``.
  Skipped, with the reason, when the warehouse plugin is not installed or cannot be queried.

All times are taken in this process (``time.time()``), so they share one clock.

Sustained: ``signalsmith serve`` (collector) and ``signalsmith worker`` writing the embedded
warehouse, on the same machine, fed at a fixed rate for a while (the HTTP destination stands in
when no warehouse plugin is installed). Every second the backlog of each sink's consumer group
(entries not yet read plus read but not yet acknowledged) is sampled; the rate is sustained
when that backlog does not grow.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import secrets
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
from ingest import (
    BENCH,
    PLACEMENTS,
    STREAM,
    Buffer,
    Server,
    run_wrk,
)
from ingest_payloads import SCENARIOS, track_event, write_template

POLL_SECONDS = 0.05
PROBES_PER_SECOND = 20
DESTINATION = "bench-http"
WAREHOUSE = "clickhouse"


class Receiver:
    """The local HTTP destination: records when each probe arrives, counts every event."""

    def __init__(self, probe_prefix: str) -> None:
        self.arrivals: dict[str, float] = {}
        self.events = 0
        self.lock = threading.Lock()
        receiver = self
        decoder = msgspec.json.Decoder()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                now = time.time()
                batch = decoder.decode(body).get("batch", [])
                with receiver.lock:
                    receiver.events += len(batch)
                    for event in batch:
                        message_id = event.get("messageId", "")
                        if message_id.startswith(probe_prefix):
                            receiver.arrivals.setdefault(message_id, now)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Probes:
    """Sends one probe event at a time, on a schedule, and records when its 200 came back."""

    def __init__(self, url: str, write_key: str, prefix: str) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self.write_key = write_key
        self.prefix = prefix
        self.answered: dict[str, float] = {}
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import base64

        auth = "Basic " + base64.b64encode(f"{self.write_key}:".encode()).decode()
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        interval = 1 / PROBES_PER_SECOND
        due = time.monotonic()
        number = 0
        while not self.stop.is_set():
            message_id = f"{self.prefix}{number:06d}"
            number += 1
            body = msgspec.json.encode(track_event(message_id))
            try:
                connection.request(
                    "POST",
                    "/v1/track",
                    body=body,
                    headers={"authorization": auth, "content-type": "application/json"},
                )
                answer = connection.getresponse()
                answer.read()
                if answer.status == 200:
                    self.answered[message_id] = time.time()
                else:
                    self.failed += 1
            except OSError:
                self.failed += 1
                connection.close()
            due += interval
            self.stop.wait(max(0.0, due - time.monotonic()))


class WarehousePoller:
    """Asks the warehouse, every POLL_SECONDS, which answered probes it can read yet."""

    def __init__(self, url: str, admin_token: str, probes: Probes) -> None:
        self.url = f"{url}/api/v1/admin/sql"
        self.token = admin_token
        self.probes = probes
        self.seen: dict[str, float] = {}
        self.error: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def query(self, sql: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url,
            data=json.dumps({"sql": sql, "limit": 10_000}).encode(),
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def available(self) -> str | None:
        """None when the warehouse can be queried here, else why not."""
        try:
            self.query("SELECT 1")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return "no warehouse plugin is installed (no /api/v1/admin/sql route)"
            return f"the warehouse cannot be queried: HTTP {error.code} {error.read()[:300]!r}"
        except OSError as error:
            return f"the warehouse cannot be queried: {error}"
        return None

    def _run(self) -> None:
        while not self.stop.wait(POLL_SECONDS):
            waiting = [m for m in list(self.probes.answered) if m not in self.seen]
            if not waiting:
                continue
            ids = ", ".join(f"'{m}'" for m in waiting)
            try:
                result = self.query(f"SELECT id FROM tracks WHERE id IN ({ids})")
            except urllib.error.HTTPError as error:
                # Before the first batch the table does not exist yet.
                self.error = f"HTTP {error.code}: {error.read()[:200]!r}"
                continue
            except OSError as error:
                self.error = str(error)
                continue
            now = time.time()
            for row in result.get("rows", []):
                self.seen.setdefault(row[0] if isinstance(row, list) else row["id"], now)


def _latencies(answered: dict[str, float], arrived: dict[str, float]) -> dict[str, Any]:
    delays = sorted(arrived[m] - answered[m] for m in answered if m in arrived)
    if not delays:
        return {"measured": 0, "of": len(answered)}

    def pct(p: float) -> float:
        return delays[min(len(delays) - 1, int(p / 100 * len(delays)))] * 1000

    return {
        "measured": len(delays),
        "of": len(answered),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": delays[-1] * 1000,
    }


@dataclass
class E2EResult:
    rate_events_per_s: float
    scenario: str
    seconds: float
    destination: dict[str, Any] = field(default_factory=dict)
    warehouse: dict[str, Any] = field(default_factory=dict)
    warehouse_skipped: str | None = None
    probes_failed: int = 0
    sink_settings: str = ""


def _sink_env(receiver: Receiver) -> dict[str, str]:
    return {
        "SIGNALSMITH_PLUGIN_MODULES": "http_destination_plugin",
        "PYTHONPATH": str(BENCH),
        "BENCH_DESTINATION_URL": receiver.url,
    }


def run_e2e(
    buffer: Buffer,
    workdir: Path,
    *,
    rate: float,
    seconds: float,
    scenario_name: str,
    collector_env: dict[str, str],
    log: Callable[[str], None],
) -> E2EResult:
    """Probe latencies through the embedded layout under ``rate`` events/s of ``scenario``."""
    scenario = SCENARIOS[scenario_name]
    buffer.reset()
    key = buffer.create_write_key()
    template = write_template(scenario, key, workdir).path
    prefix = f"probe-{secrets.token_hex(3)}-"
    receiver = Receiver(prefix)
    admin_token = secrets.token_urlsafe(16)
    env = {
        **collector_env,
        **_sink_env(receiver),
        "SIGNALSMITH_EMBEDDED_WORKER": "1",
        "SIGNALSMITH_ADMIN_TOKEN": admin_token,
    }
    placement = PLACEMENTS["shared"]
    # One HTTP worker: an embedded warehouse may be opened by one process only.
    embedded = dataclasses.replace(placement, workers=1)
    server = Server(
        "collector",
        redis_url=buffer.server.url,
        placement=embedded,
        workdir=workdir,
        collector_env=env,
    )
    result = E2EResult(rate_events_per_s=rate, scenario=scenario_name, seconds=seconds)
    try:
        server.wait_ready()
        probes = Probes(server.url, key, prefix)
        poller = WarehousePoller(server.url, admin_token, probes)
        result.warehouse_skipped = poller.available()
        load = threading.Thread(
            target=run_wrk,
            args=(server.url, template),
            kwargs={
                "seconds": seconds + 5,
                "connections": 64,
                "threads": 1,
                "cpus": None,
                "rate": rate / scenario.events,
            },
            daemon=True,
        )
        load.start()
        time.sleep(2)  # the load and the worker's batches reach a steady state
        probes.thread.start()
        if result.warehouse_skipped is None:
            poller.thread.start()
        time.sleep(seconds)
        probes.stop.set()
        probes.thread.join()
        # Wait for the last probes to land (the sinks wait up to their max_wait to fill a batch).
        deadline = time.time() + 15
        while time.time() < deadline:
            done_destination = all(m in receiver.arrivals for m in probes.answered)
            done_warehouse = result.warehouse_skipped is not None or all(
                m in poller.seen for m in probes.answered
            )
            if done_destination and done_warehouse:
                break
            time.sleep(0.1)
        poller.stop.set()
        load.join()
        result.destination = _latencies(probes.answered, receiver.arrivals)
        if result.warehouse_skipped is None:
            result.warehouse = _latencies(probes.answered, poller.seen)
            if not result.warehouse["measured"] and poller.error:
                result.warehouse_skipped = f"no probe became readable: {poller.error}"
        result.probes_failed = probes.failed
    finally:
        server.stop()
        receiver.close()
    log(f"  e2e at {rate:,.0f} events/s: destination {result.destination}")
    log(f"  e2e warehouse: {result.warehouse or result.warehouse_skipped}")
    return result


@dataclass
class SustainedResult:
    rate_events_per_s: float
    seconds: float
    accepted_events_per_s: float = 0.0
    sinks: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    sustained: bool = False
    skipped: str | None = None


def _backlogs(buffer: Buffer) -> dict[str, dict[str, int]]:
    """Per consumer group: entries not yet read (lag), read but unacknowledged, and read."""
    groups: dict[str, dict[str, int]] = {}
    for group in buffer.client.xinfo_groups(STREAM):
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        lag = group.get("lag")
        groups[name] = {
            "lag": int(lag) if lag is not None else -1,
            "pending": int(group["pending"]),
            "read": int(group.get("entries-read") or 0),
        }
    return groups


def run_sustained(
    buffer: Buffer,
    workdir: Path,
    *,
    rate: float,
    seconds: float,
    collector_env: dict[str, str],
    log: Callable[[str], None],
) -> SustainedResult:
    """Collector and worker on this machine at ``rate`` events/s (100-event batches)."""
    scenario = SCENARIOS["batch100"]
    buffer.reset()
    key = buffer.create_write_key()
    template = write_template(scenario, key, workdir).path
    receiver = Receiver("probe-none-")
    # The sustained figure is the worker writing the warehouse; the bench destination
    # would take its own share of the worker, so it runs only when there is no warehouse.
    env = dict(collector_env) if warehouse_installed() else {**collector_env, **_sink_env(receiver)}
    placement = PLACEMENTS["shared"]
    collector = Server(
        "collector", redis_url=buffer.server.url, placement=placement, workdir=workdir,
        collector_env=env,
    )  # fmt: skip
    worker = Server(
        "worker", redis_url=buffer.server.url, placement=placement, workdir=workdir,
        collector_env=env, worker_only=True,
    )  # fmt: skip
    result = SustainedResult(rate_events_per_s=rate, seconds=seconds)
    try:
        collector.wait_ready()
        # The worker makes one consumer group per sink as it starts each sink's loop; opening
        # an embedded warehouse takes a few seconds.
        wanted = WAREHOUSE if warehouse_installed() else DESTINATION
        deadline = time.time() + 60
        while time.time() < deadline and wanted not in _groups_or_empty(buffer):
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker exited: {worker.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        groups = _groups_or_empty(buffer)
        if WAREHOUSE not in groups:
            result.skipped = (
                f"no `{WAREHOUSE}` sink: the warehouse plugin is not installed or did not "
                f"start (sinks: {', '.join(groups) or 'none'}); measured with the destination only"
            )
        outcome: dict[str, Any] = {}

        def load() -> None:
            outcome.update(
                run_wrk(
                    collector.url,
                    template,
                    seconds=seconds,
                    connections=64,
                    threads=2,
                    cpus=None,
                    rate=rate / scenario.events,
                )
            )

        thread = threading.Thread(target=load, daemon=True)
        started = time.time()
        thread.start()
        while thread.is_alive():
            time.sleep(1)
            result.samples.append({"t": round(time.time() - started, 1), **_backlogs(buffer)})
        ok = outcome["requests"] - outcome["errors"]["status"]
        result.accepted_events_per_s = ok * scenario.events / (outcome["duration_us"] / 1e6)
        result.sinks, result.sustained = _judge(result.samples, rate, scenario.events)
    finally:
        collector.stop()
        worker.stop()
        receiver.close()
    log(f"  sustained at {rate:,.0f} events/s: {result.sinks} -> sustained={result.sustained}")
    return result


def warehouse_installed() -> bool:
    from importlib import metadata

    return any(
        entry_point.name == "warehouse-clickhouse"
        for entry_point in metadata.entry_points(group="signalsmith")
    )


def _groups_or_empty(buffer: Buffer) -> dict[str, dict[str, int]]:
    try:
        return _backlogs(buffer)
    except Exception:  # the stream does not exist before the first group is made
        return {}


def _judge(
    samples: Sequence[dict[str, Any]], rate: float, events_per_entry: int
) -> tuple[dict[str, dict[str, float]], bool]:
    """Per sink: backlog at the end (events, seconds of input) and its growth over the run's
    second half (events/s, least squares); sustained when no sink's backlog grows by more than
    2% of the input rate and none ends more than 2 s of input behind."""
    sinks: dict[str, dict[str, float]] = {}
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2] if samples else []
    ok = bool(half)
    for name in samples[-1] if samples else {}:
        if name == "t":
            continue
        points = [
            (s["t"], (max(0, s[name]["lag"]) + s[name]["pending"]) * events_per_entry)
            for s in half
            if name in s
        ]
        times = [t for t, _ in points]
        backlog = [b for _, b in points]
        slope = statistics.linear_regression(times, backlog).slope if len(points) > 2 else 0.0
        end = backlog[-1] if backlog else 0
        sinks[name] = {
            "backlog_events_at_end": end,
            "backlog_seconds_at_end": end / rate if rate else 0.0,
            "backlog_growth_events_per_s": slope,
        }
        if slope > 0.02 * rate or end > 2 * rate:
            ok = False
    return sinks, ok


def report_e2e(e2e: Sequence[E2EResult], sustained: Sequence[SustainedResult]) -> str:
    lines: list[str] = []
    for result in e2e:
        lines += [
            f"**End-to-end latency** under a steady {result.rate_events_per_s:,.0f} events/s "
            f"({result.scenario}, paced wrk) on the embedded layout (collector and worker in one "
            f"process, 1 Granian worker), {PROBES_PER_SECOND} probe events/s for "
            f"{result.seconds:g} s; sinks at their defaults (they wait up to their max_wait to "
            "fill a batch). Warehouse readability is polled every "
            f"{POLL_SECONDS * 1000:.0f} ms.",
            "",
            "| from the 200 to | p50 ms | p99 ms | max ms | probes |",
            "|---|---|---|---|---|",
        ]
        for label, data, skipped in (
            ("arrival at the local HTTP destination", result.destination, None),
            ("readable in the warehouse (`SELECT ... FROM tracks`)", result.warehouse,
             result.warehouse_skipped),
        ):  # fmt: skip
            if skipped:
                lines.append(f"| {label} | skipped: {skipped} | | | |")
            elif data.get("measured"):
                lines.append(
                    f"| {label} | {data['p50_ms']:.0f} | {data['p99_ms']:.0f} | "
                    f"{data['max_ms']:.0f} | {data['measured']}/{data['of']} |"
                )
            else:
                lines.append(f"| {label} | none arrived | | | 0/{data.get('of', 0)} |")
        lines.append("")
    if sustained:
        lines += [
            "**Sustained**: `signalsmith serve` (2 Granian workers) and `signalsmith worker` "
            "(writing the embedded warehouse) with Redis and wrk on this machine, 100-event "
            "batches at a fixed rate; "
            "backlog = a sink's entries not yet read plus read and unacknowledged, sampled "
            "every second; growth fitted over the second half of the run.",
            "",
            "| offered events/s | accepted events/s | sink | backlog at end (events, s of input) "
            "| backlog growth events/s | sustained |",
            "|---|---|---|---|---|---|",
        ]
        for result in sustained:
            note = f" ({result.skipped})" if result.skipped else ""
            for index, (name, sink) in enumerate(sorted(result.sinks.items())):
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            f"{result.rate_events_per_s:,.0f}" if index == 0 else "",
                            f"{result.accepted_events_per_s:,.0f}" if index == 0 else "",
                            name,
                            f"{sink['backlog_events_at_end']:,.0f} "
                            f"({sink['backlog_seconds_at_end']:.1f} s)",
                            f"{sink['backlog_growth_events_per_s']:,.0f}",
                            ("yes" if result.sustained else "**no**") + note if index == 0 else "",
                        ]
                    )
                    + " |"
                )
        lines.append("")
    return "\n".join(lines)
