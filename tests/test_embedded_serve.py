"""`signalsmith serve` on the embedded defaults: the README's first command, end to end.

Runs the real command in a fresh directory with no SIGNALSMITH_REDIS_URL, runs the `curl` it
prints, and checks the event is in the embedded Redis; then restarts it and checks the key and
the event survived.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from signalsmith.embedded import free_port
from signalsmith.model import event_list_decoder

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl to run the banner")


class Served:
    def __init__(self, process: subprocess.Popen[str], banner: str, port: int) -> None:
        self.process = process
        self.banner = banner
        self.port = port

    def field(self, label: str) -> str:
        match = re.search(rf"^\s*{re.escape(label)}:\s*(\S+)\s*$", self.banner, re.MULTILINE)
        assert match, f"{label!r} not in the start banner:\n{self.banner}"
        return match.group(1)

    @property
    def curl(self) -> str:
        lines = self.banner.splitlines()
        index = next(i for i, line in enumerate(lines) if "Send a track event" in line)
        return lines[index + 1].strip()


def _serve(workdir: Path, port: int) -> Served:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}
    # A destination that appends to a file shows the worker runs alongside the collector.
    env["SIGNALSMITH_PLUGIN_MODULES"] = "signalsmith.testing.file_sink"
    env["SIGNALSMITH_TEST_SINK_FILE"] = str(workdir / "delivered.jsonl")
    process = subprocess.Popen(
        [sys.executable, "-m", "signalsmith", "serve", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    banner: list[str] = []
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        banner.append(line)
        if line.strip().startswith("curl "):
            break
    text = "".join(banner)
    assert "curl " in text, f"serve did not print its banner:\n{text}"
    # The collector answers once Granian has started its worker.
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://127.0.0.1:{port}/healthz",
            ],
            capture_output=True,
            text=True,
        )
        if probe.stdout == "200":
            break
        time.sleep(0.1)
    return Served(process, text, port)


def _stop(served: Served) -> None:
    os.killpg(served.process.pid, signal.SIGTERM)
    try:
        served.process.wait(timeout=30)
    finally:
        if served.process.poll() is None:
            os.killpg(served.process.pid, signal.SIGKILL)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # A short path: the embedded Redis listens on a unix socket under it (108-byte limit).
    path = Path(tempfile.mkdtemp(prefix="ss-serve-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_serve_on_embedded_defaults_prints_a_working_curl(workdir: Path) -> None:
    port = free_port()
    served = _serve(workdir, port)
    try:
        assert f"SignalSmith collector on http://127.0.0.1:{port}" in served.banner
        write_key = served.field("Development write key")
        admin_token = served.field("Admin token")
        status = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/admin/status",
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert status.status_code == 200, status.text
        # The file destination, and the warehouse every default install writes to.
        assert sorted(status.json()["sinks"]) == ["clickhouse", "test-file"]
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/admin/status").status_code == 401
        redis_url = served.field("Redis (embedded)")
        assert redis_url.startswith("unix://")

        result = subprocess.run(
            ["bash", "-c", served.curl], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert '"accepted":1' in result.stdout, result.stdout

        client = sync_redis.Redis.from_url(redis_url)
        entries = client.xrange("signalsmith:events")
        [event] = [e for _, fields in entries for e in event_list_decoder.decode(fields[b"d"])]
        assert event.type == "track"
        assert event.event == "Hello SignalSmith"
        assert event.properties == {"plan": "pro"}
        client.close()

        delivered = workdir / "delivered.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not delivered.exists():
            time.sleep(0.05)
        [line] = delivered.read_text().splitlines()
        assert json.loads(line)["messageId"] == event.message_id
    finally:
        _stop(served)

    # Everything it started is gone with it: the socket stops answering.
    assert not (workdir / ".signalsmith" / "redis" / "redis.sock").exists() or not _answers(
        redis_url
    )

    # A restart keeps the development key and the stream's state (append-only file): the
    # delivered event is remembered as delivered and is not delivered again.
    served = _serve(workdir, port)
    try:
        assert served.field("Development write key") == write_key
        assert served.field("Admin token") == admin_token
        client = sync_redis.Redis.from_url(served.field("Redis (embedded)"))
        groups = {group["name"]: group for group in client.xinfo_groups("signalsmith:events")}
        assert set(groups) == {b"clickhouse", b"test-file"}
        assert groups[b"test-file"]["pending"] == 0
        assert client.exists(f"signalsmith:seen:{event.message_id}")
        client.close()
        time.sleep(1)
        assert len(delivered.read_text().splitlines()) == 1
    finally:
        _stop(served)


def _answers(url: str) -> bool:
    try:
        return bool(sync_redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except sync_redis.RedisError:
        return False


def test_worker_without_redis_url_explains_what_to_do(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALSMITH_")}
    result = subprocess.run(
        [sys.executable, "-m", "signalsmith", "worker"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SIGNALSMITH_REDIS_URL" in result.stderr
    assert "signalsmith serve" in result.stderr
