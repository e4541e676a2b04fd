"""Forwarding: delivery throughput per destination instance, end-to-end latency, and one slow
destination beside a fast one (issue 12).

    .venv/bin/python bench/forward.py [--events 50000] [--rounds 3] [--redis-url URL]
                                      [--rate 200] [--seconds 20] [--only drain,isolation,e2e]

Uses the Redis on 127.0.0.1:6379 (``--redis-url``) under prefixes of its own, deleted after.
The destinations are the real plugins (``dest-webhook``, ``dest-segment``) in a real
``signalsmith worker`` process; the far end is ``forward_receiver.py`` (bare ASGI on Granian)
answering at once, or after 2 s under ``/slow``.

- **drain**: a stream is filled with generated Ecommerce track events (100 per entry, as the
  collector writes them) for one destination instance, then the worker is started; from its
  first read to the last acknowledgement: events/s and the worker's CPU per event (utime +
  stime from /proc). Instances: webhook batches (500 per request), webhook batches with a
  six-field mapping, the Segment forward (500 per request), and webhook one request per event
  (concurrency 4, the default; fewer events). The **baseline**, in the same run on the same stream: a bare
  loop in a process of its own that reads the entries (XRANGE), decodes them, encodes 500
  events per JSON body and POSTs them with one httpx client, in order, one at a time; what any
  forwarder has to do at least.
- **isolation**: the same drain of a fast webhook instance, alone and then beside a second
  instance whose receiver answers every request after 2 s, in the same worker, both fed by the
  same stream (rounds alternate the order). The fast instance's events/s in both.
- **e2e**: ``signalsmith serve`` (collector) and ``signalsmith worker`` with a webhook instance
  (batches, ``max_wait_seconds`` 0.05), single-event ``/v1/track`` requests at a steady
  ``--rate`` for ``--seconds``: each event from its 200 at the client to its arrival at the
  receiver (both clocks are this machine's ``time.time()``): p50, p99, max.

Prints Markdown; raw figures go to ``bench/out/forward-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from ingest import cpu_seconds, process_tree
from warehouse_insert import make_events

from signalsmith.boot import plugin_manager_for
from signalsmith.config import Settings
from signalsmith.embedded import free_port
from signalsmith.hooks import Hooks
from signalsmith.model import event_list_decoder
from signalsmith.stream import entry_fields, stream_key, text
from signalsmith.workspace import DocumentText, Registry, WorkspaceStore
from signalsmith.workspace.operations import apply

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PLUGINS = "dest-webhook,dest-segment"
EVENTS_PER_ENTRY = 100
WRITE_KEY = "wk-bench-forward"
# Requests in flight at once in the end-to-end load.
SENDERS = 32


# --- processes ----------------------------------------------------------------------------------


class Process:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def cpu(self) -> float:
        return cpu_seconds(process_tree(self.popen.pid))

    def stop(self) -> None:
        """SIGINT to its process group (Granian's workers too), SIGKILL if it lingers."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def base_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALSMITH_")}
    env.update(
        SIGNALSMITH_REDIS_URL=redis_url,
        SIGNALSMITH_KEY_PREFIX=prefix,
        SIGNALSMITH_LOAD_PLUGINS=PLUGINS,
        SIGNALSMITH_WORKER_BLOCK_MS="100",
        PYTHONPATH=str(BENCH),
    )
    env.update(extra)
    return env


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def start_receiver(out: Path, *, record: bool = False) -> tuple[Process, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(BENCH), "RECORD": "1" if record else "0"}
    process = Process(
        [sys.executable, str(BENCH / "forward_receiver.py"), "--port", str(port)],
        env,
        out / f"receiver-{port}.log",
        cwd=BENCH,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            get_json(f"{url}/stats")
            return process, url
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver did not start:\n{process.tail()}") from None
            time.sleep(0.05)


# --- a workspace and a filled stream --------------------------------------------------------


async def apply_workspace(redis: aioredis.Redis, prefix: str, document: str) -> None:
    settings = Settings(key_prefix=prefix, plugins_allow=tuple(PLUGINS.split(",")))
    store = WorkspaceStore(redis, lambda *parts: ":".join((prefix, *parts)))
    registry = Registry.from_hooks(Hooks(plugin_manager_for(settings)))
    await apply(store, registry, DocumentText(text=textwrap.dedent(document)), applied_by="bench")


async def fill(redis: aioredis.Redis, prefix: str, entries: list[dict[str, Any]]) -> str:
    stream = stream_key(prefix)
    last = ""
    for start in range(0, len(entries), 50):
        async with redis.pipeline(transaction=False) as pipe:
            for fields in entries[start : start + 50]:
                pipe.xadd(stream, fields)
            ids = await pipe.execute()
        last = text(ids[-1])
    return last


def _id(value: Any) -> tuple[int, int]:
    ms, _, seq = text(value).partition("-")
    return int(ms), int(seq or 0)


async def group_state(redis: aioredis.Redis, stream: str) -> dict[str, tuple[str, int]]:
    try:
        groups = await redis.xinfo_groups(stream)
    except Exception:
        return {}
    return {text(g["name"]): (text(g["last-delivered-id"]), int(g["pending"])) for g in groups}


async def clean(redis: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in redis.scan_iter(f"{prefix}:*", count=10_000)]
    for start in range(0, len(keys), 5000):
        await redis.delete(*keys[start : start + 5000])


def webhook(url: str, settings: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A webhook instance: batches of 500 unless ``settings`` say otherwise."""
    return {
        "type": "webhook",
        "settings": {"url": url, **(settings or {"batch": True, "max_events_per_request": 500})},
        "batch_size": 500,
        "max_wait_seconds": 0.05,
        **extra,
    }


def document(destinations: dict[str, dict[str, Any]]) -> str:
    """The workspace as JSON (YAML 1.2 reads it): one source feeding every destination."""
    return json.dumps(
        {
            "version": 1,
            "sources": {"web": {"destinations": list(destinations)}},
            "destinations": destinations,
        }
    )


MAPPING = {
    "track": {
        "name": {"@path": "$.event"},
        "user": {"@path": "$.userId"},
        "at": {"@path": "$.timestamp"},
        "order": {"@path": "$.properties.order_id"},
        "total": {
            "@if": {
                "exists": {"@path": "$.properties.total"},
                "then": {"@path": "$.properties.total"},
                "else": 0,
            }
        },
        "skus": {"@arrayPath": ["$.properties.products", {"sku": {"@path": "$.sku"}}]},
    }
}


async def drain(
    redis_url: str,
    out: Path,
    receiver: str,
    entries: list[dict[str, Any]],
    destinations: dict[str, dict[str, Any]],
    watched: list[str],
) -> dict[str, Any]:
    """Fill a fresh stream for ``destinations`` and run a worker until ``watched`` drained."""
    prefix = f"bench-fwd-{secrets.token_hex(4)}"
    redis = aioredis.Redis.from_url(redis_url)
    stream = stream_key(prefix)
    worker: Process | None = None
    try:
        await apply_workspace(redis, prefix, document(destinations))
        last = await fill(redis, prefix, entries)
        get_json(f"{receiver}/reset")
        env = base_env(redis_url, prefix, SEGMENT_KEY=WRITE_KEY)
        worker = Process(
            [sys.executable, "-m", "signalsmith", "worker"], env, out / f"worker-{prefix}.log"
        )
        # From the first read: the worker's start-up (imports, plugins) is not delivery.
        while True:
            state = await group_state(redis, stream)
            if any(_id(state.get(n, ("0-0", 0))[0]) > (0, 0) for n in watched):
                break
            if worker.popen.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{worker.tail()}")
            await asyncio.sleep(0.002)
        started, cpu = time.perf_counter(), worker.cpu()
        done: dict[str, float] = {}
        while len(done) < len(watched):
            state = await group_state(redis, stream)
            for name in watched:
                delivered, pending = state.get(name, ("0-0", 1))
                if name not in done and _id(delivered) >= _id(last) and pending == 0:
                    done[name] = time.perf_counter() - started
            await asyncio.sleep(0.005)
        cpu_used = worker.cpu() - cpu
        count = len(entries) * EVENTS_PER_ENTRY
        return {
            "events": count,
            "seconds": done,
            "events_per_second": {name: count / seconds for name, seconds in done.items()},
            "cpu_us_per_event": cpu_used / count * 1e6 if len(watched) == 1 else None,
            "received": get_json(f"{receiver}/stats"),
        }
    finally:
        if worker is not None:
            worker.stop()
        await clean(redis, prefix)
        await redis.aclose()


# --- the bare baseline ----------------------------------------------------------------------------


async def bare_drain(redis_url: str, prefix: str, url: str) -> dict[str, float]:
    """Read every entry, decode, encode 500 events per body, POST one at a time."""
    import msgspec

    redis = aioredis.Redis.from_url(redis_url)
    stream = stream_key(prefix)
    encoder = msgspec.json.Encoder()
    count = 0
    started, cpu = time.perf_counter(), time.process_time()
    async with httpx.AsyncClient(timeout=30) as client:
        start = "-"
        pending: list[Any] = []
        while True:
            page = await redis.xrange(stream, start, "+", count=100)
            for _, fields in page:
                pending += event_list_decoder.decode(fields[b"d"])
                while len(pending) >= 500:
                    body = encoder.encode(pending[:500])
                    pending = pending[500:]
                    (
                        await client.post(
                            url, content=body, headers={"content-type": "application/json"}
                        )
                    ).raise_for_status()
                    count += 500
            if len(page) < 100:
                break
            start = "(" + text(page[-1][0])
        if pending:
            await client.post(url, content=encoder.encode(pending))
            count += len(pending)
    elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu
    await redis.aclose()
    return {
        "events": count,
        "events_per_second": count / elapsed,
        "cpu_us_per_event": cpu_used / count * 1e6,
    }


async def baseline(
    redis_url: str, out: Path, receiver: str, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    prefix = f"bench-fwd-{secrets.token_hex(4)}"
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await fill(redis, prefix, entries)
        get_json(f"{receiver}/reset")
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(BENCH / "forward.py"),
                "--bare",
                redis_url,
                prefix,
                f"{receiver}/bare",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(BENCH)},
            check=True,
        )
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        figures["received"] = get_json(f"{receiver}/stats")
        return figures
    finally:
        await clean(redis, prefix)
        await redis.aclose()


# --- end to end -----------------------------------------------------------------------------------


async def e2e(redis_url: str, out: Path, rate: float, seconds: float) -> dict[str, Any]:
    prefix = f"bench-fwd-{secrets.token_hex(4)}"
    redis = aioredis.Redis.from_url(redis_url)
    receiver, receiver_url = start_receiver(out, record=True)
    port = free_port()
    env = base_env(
        redis_url,
        prefix,
        SIGNALSMITH_LOAD_PLUGINS=f"signalsmith.testing.env_keys,{PLUGINS}",
        SIGNALSMITH_PLUGIN_MODULES="signalsmith.testing.env_keys",
        SIGNALSMITH_TEST_WRITE_KEYS=f"{WRITE_KEY}=web",
    )
    processes: list[Process] = []
    try:
        await apply_workspace(redis, prefix, document({"hook": webhook(f"{receiver_url}/e2e")}))
        collector = Process(
            [sys.executable, "-m", "signalsmith", "serve", "--port", str(port)],
            env,
            out / "e2e-serve.log",
        )
        processes.append(collector)
        worker = Process(
            [sys.executable, "-m", "signalsmith", "worker"], env, out / "e2e-worker.log"
        )
        processes.append(worker)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if get_json(f"{base}/healthz") is not None:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(collector.tail())
            await asyncio.sleep(0.1)
        accepted: dict[str, float] = {}
        failures = 0
        async with httpx.AsyncClient(base_url=base, auth=(WRITE_KEY, ""), timeout=10) as client:

            async def one(message_id: str) -> None:
                nonlocal failures
                answer = await client.post(
                    "/v1/track", json={"userId": "u-1", "event": "Probe", "messageId": message_id}
                )
                if answer.status_code == 200:
                    accepted[message_id] = time.time()
                else:
                    failures += 1

            # Warm-up, then the paced run: the n-th request is due at n/rate seconds. A fixed
            # set of senders takes the slots in turn (httpx slows down badly with thousands of
            # requests waiting for its pool); a sender that falls behind sends at once, and the
            # rate achieved is reported.
            await asyncio.gather(*(one(f"warm-{n}") for n in range(20)))
            total = int(rate * seconds)
            slots = iter(range(total))
            begin = time.perf_counter()

            async def sender() -> None:
                for n in slots:
                    delay = begin + n / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await one(f"probe-{prefix}-{n}")

            await asyncio.gather(*(sender() for _ in range(SENDERS)))
            achieved = total / (time.perf_counter() - begin)
        probes = {k: v for k, v in accepted.items() if k.startswith("probe-")}
        wait_until = time.monotonic() + 30
        while True:
            arrivals = get_json(f"{receiver_url}/arrivals")
            if all(k in arrivals for k in probes) or time.monotonic() > wait_until:
                break
            await asyncio.sleep(0.2)
        latencies = sorted((arrivals[k] - t) * 1000 for k, t in probes.items() if k in arrivals)
        return {
            "rate": rate,
            "achieved_rate": achieved,
            "sent": total,
            "accepted": len(probes),
            "failures": failures,
            "arrived": len(latencies),
            "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
            "max_ms": latencies[-1],
        }
    finally:
        for process in processes:
            process.stop()
        receiver.stop()
        await clean(redis, prefix)
        await redis.aclose()


# --- the run ----------------------------------------------------------------------------------


def entries_of(events: list[Any]) -> list[dict[str, Any]]:
    out = []
    for start in range(0, len(events), EVENTS_PER_ENTRY):
        fields = entry_fields("web", events[start : start + EVENTS_PER_ENTRY])
        out.append(dict(zip(fields[::2], fields[1::2], strict=True)))
    return out


def median_of(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    results: dict[str, Any] = {"drain": {}, "isolation": [], "e2e": []}
    parts = set(args.only.split(","))
    receiver, url = start_receiver(out)
    try:
        events = make_events(args.events)
        entries = entries_of(events)
        few = entries_of(events[: args.single_events])
        segment = {
            "type": "segment",
            "settings": {"url": f"{url}/segment/v1/batch", "write_key": "${SEGMENT_KEY}"},
            "batch_size": 500,
            "max_wait_seconds": 0.05,
        }
        variants: dict[str, tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]] = {
            "webhook, batches of 500": (entries, {"hook": webhook(f"{url}/batch")}),
            "webhook, batches of 500, 6-field mapping": (
                entries,
                {"hook": webhook(f"{url}/mapped", mapping=MAPPING)},
            ),
            "segment forward, batches of 500": (entries, {"hook": segment}),
            "webhook, one request per event (concurrency 4)": (
                few,
                {"hook": webhook(f"{url}/single", {"concurrency": 4})},
            ),
        }
        if "drain" in parts:
            for round_number in range(args.rounds):
                figures = await baseline(args.redis_url, out, url, entries)
                results["drain"].setdefault(
                    "baseline (bare loop, one httpx POST per 500)", []
                ).append(figures)
                print(
                    f"round {round_number + 1} baseline: {figures['events_per_second']:,.0f} events/s",
                    flush=True,
                )
                for label, (feed, destinations) in variants.items():
                    figures = await drain(args.redis_url, out, url, feed, destinations, ["hook"])
                    results["drain"].setdefault(label, []).append(figures)
                    print(
                        f"round {round_number + 1} {label}: {figures['events_per_second']['hook']:,.0f} "
                        f"events/s, {figures['cpu_us_per_event']:.1f} µs/event; received {figures['received']['events']}",
                        flush=True,
                    )
        if "isolation" in parts:
            fast = webhook(f"{url}/fast")
            slow = webhook(f"{url}/slow")
            for round_number in range(args.rounds):
                order = [False, True] if round_number % 2 == 0 else [True, False]
                for with_slow in order:
                    destinations = {"fast": fast, **({"slow": slow} if with_slow else {})}
                    figures = await drain(args.redis_url, out, url, entries, destinations, ["fast"])
                    figures["with_slow"] = with_slow
                    results["isolation"].append(figures)
                    print(
                        f"round {round_number + 1} fast {'beside slow' if with_slow else 'alone'}: "
                        f"{figures['events_per_second']['fast']:,.0f} events/s; slow received "
                        f"{figures['received']['events'].get('/slow', 0)} events",
                        flush=True,
                    )
        if "e2e" in parts:
            for rate in args.rate:
                figures = await e2e(args.redis_url, out, rate, args.seconds)
                results["e2e"].append(figures)
                print(
                    f"e2e at {rate:g} events/s: p50 {figures['p50_ms']:.1f} ms, p99 "
                    f"{figures['p99_ms']:.1f} ms, max {figures['max_ms']:.1f} ms "
                    f"({figures['arrived']}/{figures['accepted']} arrived)",
                    flush=True,
                )
    finally:
        receiver.stop()
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()} {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, `{' '.join(sys.argv)}`",
        "",
    ]
    if results["drain"]:
        base = statistics.median(
            r["events_per_second"]
            for r in results["drain"]["baseline (bare loop, one httpx POST per 500)"]
        )
        lines += [
            "| delivery (one instance) | events/s, median (min-max) | CPU µs/event | / baseline |",
            "|---|---:|---:|---:|",
        ]
        for label, rounds in results["drain"].items():
            rates = [
                r["events_per_second"]["hook"]
                if isinstance(r["events_per_second"], dict)
                else r["events_per_second"]
                for r in rounds
            ]
            cpus = [r["cpu_us_per_event"] for r in rounds]
            lines.append(
                f"| {label} | {median_of(rates)} | {statistics.median(cpus):.1f} | "
                f"{statistics.median(rates) / base:.2f} |"
            )
        lines.append("")
    if results["isolation"]:
        alone = [r["events_per_second"]["fast"] for r in results["isolation"] if not r["with_slow"]]
        beside = [r["events_per_second"]["fast"] for r in results["isolation"] if r["with_slow"]]
        lines += [
            "| fast webhook instance | events/s, median (min-max) |",
            "|---|---:|",
            f"| alone | {median_of(alone)} |",
            f"| beside an instance whose receiver answers in 2 s | {median_of(beside)} |",
            f"| ratio | {statistics.median(beside) / statistics.median(alone):.2f} |",
            "",
        ]
    if results["e2e"]:
        lines += [
            "| steady rate (achieved) | p50 | p99 | max | arrived |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in results["e2e"]:
            lines.append(
                f"| {r['rate']:g} events/s ({r['achieved_rate']:,.0f}) | {r['p50_ms']:.1f} ms | "
                f"{r['p99_ms']:.1f} ms | {r['max_ms']:.1f} ms | {r['arrived']}/{r['accepted']} |"
            )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--bare":
        print(json.dumps(asyncio.run(bare_drain(*sys.argv[2:5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--single-events", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rate", type=float, action="append", default=None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", default="drain,isolation,e2e")
    args = parser.parse_args()
    args.rate = args.rate or [200.0]
    results = asyncio.run(run(args))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (BENCH / "out" / f"forward-{stamp}.json").write_text(json.dumps(results, indent=1))
    print()
    print(report(results, args))


if __name__ == "__main__":
    main()
