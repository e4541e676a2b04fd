"""`signalsmith serve` on the embedded defaults: the README's first command, end to end.

Runs the real command in a fresh directory with no SIGNALSMITH_REDIS_URL, runs the `curl` it
prints, and checks the event is in the embedded Redis; then restarts it and checks the key and
the event survived, and that the restart printed where the secrets are kept, not the secrets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis

from signalsmith.embedded import free_port
from signalsmith.model import event_list_decoder

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl to run the banner")


def _file_sink_env(workdir: Path) -> dict[str, str]:
    # A destination that appends to a file shows the worker runs alongside the collector.
    return {
        "SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.file_sink",
        "SIGNALSMITH_TEST_SINK_FILE": str(workdir / "delivered.jsonl"),
    }


def test_serve_on_embedded_defaults_prints_a_working_curl(
    embedded_workdir: Path, embedded_server: Callable[..., Any]
) -> None:
    workdir = embedded_workdir
    port = free_port()
    served = embedded_server(workdir, port, _file_sink_env(workdir))
    try:
        assert f"SignalSmith collector on http://127.0.0.1:{port}" in served.banner
        write_key = served.field("Development write key")
        admin_token = served.field("Admin token")
        status = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/admin/status",
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert status.status_code == 200, status.text
        # The file destination, the warehouse every default install writes to, and the
        # debugger's sink (it records every buffered event).
        assert sorted(status.json()["sinks"]) == ["clickhouse", "debugger", "test-file"]
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
        served.stop()

    # Everything it started is gone with it: the socket stops answering.
    assert not (workdir / ".signalsmith" / "redis" / "redis.sock").exists() or not _answers(
        redis_url
    )

    # A restart keeps the development key and the stream's state (append-only file): the
    # delivered event is remembered as delivered and is not delivered again.
    served = embedded_server(workdir, port, _file_sink_env(workdir))
    try:
        # The secrets were printed once, when created; now the banner says where they are.
        data_dir = workdir / ".signalsmith"
        output = served.output()
        assert write_key not in output and admin_token not in output, output
        assert f"kept in {data_dir / 'dev-write-key'}" in served.banner
        assert f"kept in {data_dir / 'admin-token'}" in served.banner
        assert (data_dir / "dev-write-key").read_text().strip() == write_key
        assert (data_dir / "admin-token").read_text().strip() == admin_token
        # The curl reads the key from its file, and still works.
        result = subprocess.run(
            ["bash", "-c", served.curl], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert '"accepted":1' in result.stdout, result.stdout

        client = sync_redis.Redis.from_url(served.field("Redis (embedded)"))
        groups = {group["name"]: group for group in client.xinfo_groups("signalsmith:events")}
        assert set(groups) == {b"clickhouse", b"debugger", b"test-file"}
        assert any(
            client.sismember(bucket, event.message_id)
            for bucket in client.scan_iter("signalsmith:seen-ids:*")
        )
        client.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(delivered.read_text().splitlines()) < 2:
            time.sleep(0.05)
        time.sleep(1)
        # The first event once, the second once.
        ids = [json.loads(line)["messageId"] for line in delivered.read_text().splitlines()]
        assert len(ids) == 2 and ids[0] == event.message_id, ids
    finally:
        served.stop()


def _answers(url: str) -> bool:
    try:
        return bool(sync_redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except sync_redis.RedisError:
        return False


def test_worker_without_redis_url_explains_what_to_do(embedded_workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALSMITH_")}
    result = subprocess.run(
        [sys.executable, "-m", "signalsmith", "worker"],
        cwd=embedded_workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SIGNALSMITH_REDIS_URL" in result.stderr
    assert "signalsmith serve" in result.stderr
