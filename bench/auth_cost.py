"""Write-key auth and rate limits: their cost against the same collector with the plugin blocked.

    .venv/bin/python bench/auth_cost.py                     # prints the report
    .venv/bin/python bench/auth_cost.py --record            # ... and adds it to bench/RESULTS.md

Starts a private Redis (Debian's redis-server when installed, AOF everysec as the embedded
default runs it) and two ``signalsmith serve`` collectors with the same settings and Granian
flags:

- ``plugin``: only the auth-writekey plugin (``SIGNALSMITH_LOAD_PLUGINS=auth-writekey``), with a
  real key on the enterprise plan at 10^9 events/s, so the limiter runs on every request and
  never refuses;
- ``blocked``: the same, with the plugin blocked (``SIGNALSMITH_BLOCK_PLUGINS=auth-writekey``)
  and ``signalsmith.testing.env_keys`` answering the same key from a dict, so requests still pass.

For each batch size it alternates the two for several rounds (ABBA order, so drift and noise from
the machine fall on both), each round a closed-loop wrk run (bench/loadgen/auth_cost.lua; every
request carries new messageIds). It reports requests/s (median of rounds), their ratio, the extra
time per request at saturation, server CPU per request (the Granian process tree, from /proc), and
Redis commands per request (INFO commandstats): the plugin should add exactly one EVALSHA and no
HGETALL once its cache is warm. Any non-2xx answer fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import redis

from signalsmith.embedded import RedisServerProcess, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "loadgen" / "auth_cost.lua"
RESULTS = BENCH / "RESULTS.md"
SECTION = "## Write-key auth and rate limits"
PLACEHOLDER = "_No run recorded yet._"
TARGETS = ("blocked", "plugin")
# Far above anything one machine can send: the limiter runs but never refuses.
PERMISSIVE = 10**9


class WrkResult(msgspec.Struct, frozen=True):
    requests: int
    duration_us: int
    non_2xx: int
    socket_errors: int
    p50_us: int
    p99_us: int
    mean_us: float

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)


@dataclass
class Round:
    target: str
    batch: int
    wrk: WrkResult
    server_cpu_us: float  # per request
    redis_cpu_us: float  # per request
    commands: dict[str, float]  # Redis calls per request, by command


@dataclass
class Collector:
    name: str
    env: dict[str, str]
    cpus: str | None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        command = [sys.executable, "-m", "signalsmith", "serve", "--port", str(self.port)]
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        log = (log_dir / f"{self.name}.log").open("wb")
        self.process = subprocess.Popen(
            command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped by its own id
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {log_dir / self.name}.log")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return sum(_cpu_seconds(pid) for pid in _tree(self.process.pid))


def _tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _tree(int(child))
    return found


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat; after the ")" they are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_key(redis_url: str, key_prefix: str) -> str:
    from redis import asyncio as aioredis

    from signalsmith_auth_writekey import KeyStore

    async def create() -> str:
        client = aioredis.Redis.from_url(redis_url)
        try:
            store = KeyStore(client, lambda *parts: ":".join((key_prefix, *parts)))
            plaintext, _ = await store.create(
                "bench", plan="enterprise", rate=PERMISSIVE, burst=PERMISSIVE
            )
            return plaintext
        finally:
            await client.aclose()

    return asyncio.run(create())


def run_wrk(
    url: str, key: str, batch: int, seconds: float, connections: int, cpus: str | None
) -> WrkResult:
    env = {
        **os.environ,
        "BENCH_AUTH": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
        "BENCH_BATCH": str(batch),
        "BENCH_TAG": uuid.uuid4().hex[:8],
    }
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH_JSON "))
    return msgspec.json.decode(line.removeprefix("BENCH_JSON "), type=WrkResult)


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def measure(
    collector: Collector,
    client: redis.Redis,
    key: str,
    batch: int,
    args: argparse.Namespace,
    wrk_cpus: str | None,
    prefixes: Sequence[str],
) -> Round:
    # Let the previous run's last requests finish, so they are not counted in this one.
    time.sleep(0.5)
    for prefix in prefixes:
        # An empty stream each round, so XADD costs the same in every round.
        client.delete(f"{prefix}:events")
    calls, rcpu, scpu = command_calls(client), redis_cpu(client), collector.cpu_seconds()
    result = run_wrk(collector.url, key, batch, args.seconds, args.connections, wrk_cpus)
    scpu, rcpu = collector.cpu_seconds() - scpu, redis_cpu(client) - rcpu
    after = command_calls(client)
    if result.non_2xx or result.socket_errors:
        raise RuntimeError(
            f"{collector.name}: {result.non_2xx} non-2xx answers and {result.socket_errors} "
            "socket errors; see the collector logs in the work directory"
        )
    per_request = {
        name: (after[name] - calls.get(name, 0)) / result.requests
        for name in after
        if after[name] != calls.get(name, 0)
    }
    return Round(
        target=collector.name,
        batch=batch,
        wrk=result,
        server_cpu_us=scpu / result.requests * 1e6,
        redis_cpu_us=rcpu / result.requests * 1e6,
        commands=per_request,
    )


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-vCPU {platform.machine()} ({cpu}), Linux {platform.release()}"


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return f"{head} + uncommitted changes" if dirty else head
    except OSError:
        return "unknown"


def report(
    rounds: list[Round],
    args: argparse.Namespace,
    redis_version: str,
    pinned: bool,
    load: tuple[float, float],
) -> str:
    def median(target: str, batch: int, value) -> float:  # type: ignore[no-untyped-def]
        return statistics.median(value(r) for r in rounds if (r.target, r.batch) == (target, batch))

    command_line = " ".join(["bench/auth_cost.py", *sys.argv[1:]]).replace(" --record", "")
    placement = "collector pinned to CPU 1, Redis and wrk to CPU 0" if pinned else "no CPU pinning"
    intro = (
        f"{datetime.now(UTC):%Y-%m-%d}, commit {commit()}, {machine()}, Redis {redis_version} "
        f"AOF everysec, one Granian worker, wrk -t1 -c{args.connections} closed loop, "
        f"{placement}, {args.rounds} rounds of {args.seconds:g} s per target alternating ABBA, "
        f"medians; load average {load[0]:.1f} at the start and {load[1]:.1f} at the end; "
        f"`.venv/bin/python {command_line}`:"
    )
    lines = [
        *textwrap.wrap(intro, width=100, break_on_hyphens=False, break_long_words=False),
        "",
        "| events/request | blocked req/s | plugin req/s | plugin / blocked | extra µs/request "
        "| server CPU µs/request (blocked → plugin) | Redis CPU µs/request | Redis calls/request "
        "| p50 ms (blocked → plugin) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in args.batch:
        blocked = median("blocked", batch, lambda r: r.wrk.rps)
        plugin = median("plugin", batch, lambda r: r.wrk.rps)

        def calls(target: str, batch: int = batch) -> str:
            # Top-level commands only: EVALSHA is a round trip (the admit script, and the
            # buffer's append); HGETALL is a key lookup the cache missed. What the scripts run
            # inside (HMGET, HSET, TIME, SET, XADD) is in commandstats too, but costs no trip.
            return ", ".join(
                f"{name} {median(target, batch, lambda r, n=name: r.commands.get(n, 0.0)):.2f}"
                for name in ("evalsha", "hgetall")
            )

        lines.append(
            f"| {batch} | {blocked:,.0f} | {plugin:,.0f} | {plugin / blocked:.3f} "
            f"| {1e6 / plugin - 1e6 / blocked:+.1f} "
            f"| {median('blocked', batch, lambda r: r.server_cpu_us):.0f} → "
            f"{median('plugin', batch, lambda r: r.server_cpu_us):.0f} "
            f"| {median('blocked', batch, lambda r: r.redis_cpu_us):.1f} → "
            f"{median('plugin', batch, lambda r: r.redis_cpu_us):.1f} "
            f"| blocked: {calls('blocked')}; plugin: {calls('plugin')} "
            f"| {median('blocked', batch, lambda r: r.wrk.p50_us) / 1000:.2f} → "
            f"{median('plugin', batch, lambda r: r.wrk.p50_us) / 1000:.2f} |"
        )
    return "\n".join(lines)


def record(text: str) -> None:
    """Put ``text`` first in the write-key section of RESULTS.md, touching nothing else."""
    lines = RESULTS.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(SECTION))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = lines[start + 1 : end]
    entry = [line + "\n" for line in text.splitlines()]
    placeholder = next((i for i, line in enumerate(body) if line.strip() == PLACEHOLDER), None)
    if placeholder is not None:
        body[placeholder : placeholder + 1] = entry
    else:
        first = next((i for i, line in enumerate(body) if line.strip()), len(body))
        body[first:first] = [*entry, "\n"]
    lines[start + 1 : end] = body
    RESULTS.write_text("".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per target and batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[1, 20], help="events per request (several ok)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--record", action="store_true", help="add the report to RESULTS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (see bench/README.md)")
    pinned = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpus, wrk_cpus = ("1", "0") if pinned else (None, None)

    load_at_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="ss-auth-bench-"))
    if Path("/usr/bin/redis-server").exists():
        os.environ.setdefault("SIGNALSMITH_REDIS_SERVER", "/usr/bin/redis-server")
    server = RedisServerProcess(workdir / "redis", appendonly=True).start()
    if pinned and server.process is not None:
        subprocess.run(["taskset", "-pc", "0", str(server.process.pid)], capture_output=True)
    client = redis.Redis.from_url(server.url)
    collectors: list[Collector] = []
    try:
        prefix = {name: f"bench-{name}" for name in TARGETS}
        key = create_key(server.url, prefix["plugin"])
        base = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALSMITH_")}
        base.update(
            {
                "SIGNALSMITH_REDIS_URL": server.url,
                "SIGNALSMITH_DATA_DIR": str(workdir / "data"),
                "SIGNALSMITH_BACKLOG_MAX_ENTRIES": "0",
                "SIGNALSMITH_LOAD_PLUGINS": "auth-writekey",
            }
        )
        collectors = [
            Collector(
                "blocked",
                {
                    **base,
                    "SIGNALSMITH_KEY_PREFIX": prefix["blocked"],
                    "SIGNALSMITH_BLOCK_PLUGINS": "auth-writekey",
                    "SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.env_keys",
                    "SIGNALSMITH_TEST_WRITE_KEYS": f"{key}=bench",
                },
                server_cpus,
            ),
            Collector("plugin", {**base, "SIGNALSMITH_KEY_PREFIX": prefix["plugin"]}, server_cpus),
        ]
        for collector in collectors:
            collector.start(workdir)
        by_name = {c.name: c for c in collectors}
        rounds: list[Round] = []
        for batch in args.batch:
            for collector in collectors:  # warm up: caches, script load, connections
                run_wrk(collector.url, key, batch, 2, args.connections, wrk_cpus)
            for number in range(args.rounds):
                order = TARGETS if number % 2 == 0 else tuple(reversed(TARGETS))
                for name in order:
                    result = measure(
                        by_name[name], client, key, batch, args, wrk_cpus, list(prefix.values())
                    )
                    rounds.append(result)
                    print(
                        f"batch {batch:>3} round {number + 1} {name:<8} "
                        f"{result.wrk.rps:>9,.0f} req/s  p50 {result.wrk.p50_us / 1000:.2f} ms  "
                        f"server {result.server_cpu_us:.0f} µs/req  "
                        f"redis {', '.join(f'{k} {v:.2f}' for k, v in sorted(result.commands.items()))}",
                        flush=True,
                    )
        version = str(client.info("server")["redis_version"])
        text = report(rounds, args, version, pinned, (load_at_start, os.getloadavg()[0]))
        print()
        print(text)
        if args.record:
            record(text)
            print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")
    finally:
        for collector in collectors:
            collector.stop()
        client.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
