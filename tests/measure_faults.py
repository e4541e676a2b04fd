"""Fault figures for the embedded `signalsmith serve`: what is acknowledged, and what arrives.

Not a test (nothing here asserts): a script that runs real servers under continuous traffic,
applies one fault, and prints what happened, for docs/reliability.md.

    .venv/bin/python tests/measure_faults.py [redis-kill|serve-kill|sigint] [--trials N]

Each trial: a fresh data directory, `signalsmith serve` on the embedded defaults plus a
destination appending every delivered event to a file, and two clients sending single-event
requests back to back (keep-alive). For each request the answer is recorded; afterwards every
messageId answered 200 is looked for in the destination's file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from conftest import EmbeddedServer, start_embedded_server

from signalsmith.embedded import free_port
from signalsmith.testing import track


class Traffic:
    def __init__(self, url: str, key: str, clients: int = 2) -> None:
        self.url, self.key = url, key
        self.answers: list[tuple[float, str, int | None]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(clients)]

    def start(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _send(self) -> None:
        with httpx.Client(base_url=self.url, auth=(self.key, ""), timeout=10) as http:
            while not self.stopping.is_set():
                body = track(event="Fault Probe")
                try:
                    status: int | None = http.post("/v1/track", json=body).status_code
                except httpx.TransportError:
                    status = None
                    time.sleep(0.05)
                with self.lock:
                    self.answers.append((time.monotonic(), body["messageId"], status))

    def acknowledged(self) -> set[str]:
        with self.lock:
            return {mid for _, mid, status in self.answers if status == 200}

    def count(self, status: int | None, after: float = 0.0) -> int:
        with self.lock:
            return sum(1 for t, _, s in self.answers if s == status and t >= after)

    def first(self, status: int, after: float) -> float | None:
        with self.lock:
            return next((t for t, _, s in self.answers if s == status and t >= after), None)


def delivered(workdir: Path) -> set[str]:
    path = workdir / "delivered.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["messageId"] for line in path.read_text().splitlines() if line}


def wait_delivered(workdir: Path, wanted: set[str], timeout: float = 60.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not wanted <= delivered(workdir):
        time.sleep(0.2)
    return wanted - delivered(workdir)


def start(workdir: Path, port: int) -> EmbeddedServer:
    return start_embedded_server(
        workdir,
        port,
        {
            "SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.file_sink",
            "SIGNALSMITH_TEST_SINK_FILE": str(workdir / "delivered.jsonl"),
        },
    )


def redis_kill(workdir: Path) -> dict[str, object]:
    served = start(workdir, free_port())
    key = (workdir / ".signalsmith" / "dev-write-key").read_text().strip()
    traffic = Traffic(served.url, key).start()
    try:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(served.redis_pid(), signal.SIGKILL)
        while traffic.first(200, after=killed_at + 0.05) is None:
            time.sleep(0.05)
            if time.monotonic() - killed_at > 60:
                break
        back = traffic.first(200, after=killed_at + 0.05)
        time.sleep(3)
    finally:
        traffic.stop()
    acked = traffic.acknowledged()
    lost = wait_delivered(workdir, acked)
    served.stop()
    return {
        "acknowledged": len(acked),
        "not delivered": len(lost),
        "503 while Redis was down": traffic.count(503, after=killed_at),
        "no answer": traffic.count(None),
        "kill to first 200 (s)": round(back - killed_at, 2) if back else None,
    }


def serve_kill(workdir: Path) -> dict[str, object]:
    port = free_port()
    served = start(workdir, port)
    key = (workdir / ".signalsmith" / "dev-write-key").read_text().strip()
    traffic = Traffic(served.url, key).start()
    try:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(served.process.pid, signal.SIGKILL)
        served.process.wait()
        again = start(workdir, port)
        restarted = time.monotonic() - killed_at
        time.sleep(3)
    finally:
        traffic.stop()
    acked = traffic.acknowledged()
    lost = wait_delivered(workdir, acked)
    left = served.leftovers()
    again.stop()
    return {
        "acknowledged": len(acked),
        "not delivered": len(lost),
        "kill to next serve answering (s)": round(restarted, 2),
        "processes left by the killed serve": len(left),
        "no answer / 503": f"{traffic.count(None)} / {traffic.count(503)}",
    }


def sigint(workdir: Path) -> dict[str, object]:
    served = start(workdir, free_port())
    key = (workdir / ".signalsmith" / "dev-write-key").read_text().strip()
    traffic = Traffic(served.url, key).start()
    try:
        time.sleep(3)
        stopped_at = time.monotonic()
        served.signal_group(signal.SIGINT)
        code = served.wait(timeout=60)
        took = time.monotonic() - stopped_at
    finally:
        traffic.stop()
    acked = traffic.acknowledged()
    # Delivered by the time the server exited: nothing runs any more to deliver the rest.
    lost = acked - delivered(workdir)
    return {
        "acknowledged": len(acked),
        "not delivered at exit": len(lost),
        "exit status": code,
        "SIGINT to exit (s)": round(took, 2),
        "processes left": len(served.leftovers()),
    }


SCENARIOS = {"redis-kill": redis_kill, "serve-kill": serve_kill, "sigint": sigint}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    for name in args.scenarios or SCENARIOS:
        for trial in range(1, args.trials + 1):
            workdir = Path(tempfile.mkdtemp(prefix="ss-fault-"))
            try:
                print(f"{name} #{trial}: {SCENARIOS[name](workdir)}", flush=True)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
