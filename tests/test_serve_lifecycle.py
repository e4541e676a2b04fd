"""`signalsmith serve` on the embedded defaults under the faults of a real machine.

Real processes and real signals: a second serve on a busy port, another program on the port, the
embedded Redis killed under a running server, the server itself killed with SIGKILL, Ctrl-C
(SIGINT to the whole process group) and SIGHUP. Each test checks what a user would: the error
they read, whether the server keeps answering, and whether every acknowledged event arrives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import redis as sync_redis

from signalsmith.embedded import RedisServerProcess, free_port
from signalsmith.testing import track

if TYPE_CHECKING:
    from conftest import Collector, EmbeddedServer

WAIT = 60.0  # seconds allowed for each phase to show what it should; never a speed assertion


def file_sink_env(workdir: Path) -> dict[str, str]:
    """A destination appending each delivered event to a file, beside the warehouse."""
    return {
        "SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.file_sink",
        "SIGNALSMITH_TEST_SINK_FILE": str(workdir / "delivered.jsonl"),
    }


def write_key_of(workdir: Path) -> str:
    return (workdir / ".signalsmith" / "dev-write-key").read_text().strip()


def send(url: str, key: str, count: int, *, event: str = "Probe") -> list[str]:
    """Send ``count`` track events one request each; return the messageIds answered 200."""
    acknowledged = []
    with httpx.Client(base_url=url, auth=(key, ""), timeout=30) as http:
        for _ in range(count):
            body = track(event=event)
            response = http.post("/v1/track", json=body)
            assert response.status_code == 200, response.text
            acknowledged.append(body["messageId"])
    return acknowledged


def delivered_ids(workdir: Path) -> set[str]:
    path = workdir / "delivered.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["messageId"] for line in path.read_text().splitlines() if line}


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_delivered(workdir: Path, message_ids: list[str]) -> None:
    deadline = time.monotonic() + WAIT
    while not set(message_ids) <= delivered_ids(workdir):
        if time.monotonic() > deadline:
            missing = set(message_ids) - delivered_ids(workdir)
            raise AssertionError(
                f"{len(missing)} of {len(message_ids)} acknowledged events never reached "
                "the file destination"
            )
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def groups_after_exit(workdir: Path) -> tuple[dict[str, dict[str, object]], bytes | None]:
    """Every consumer group of the stream, and the stream's last entry id, read from the
    append-only file of a stopped server."""
    server = RedisServerProcess(workdir / ".signalsmith" / "redis", unix_socket=True).start()
    try:
        client = sync_redis.Redis.from_url(server.url)
        groups = {
            group["name"].decode(): group for group in client.xinfo_groups("signalsmith:events")
        }
        last = client.xinfo_stream("signalsmith:events")["last-generated-id"]
        client.close()
        return groups, last
    finally:
        server.stop()


# --- item 10: a port in use --------------------------------------------------------------------


def run_serve_expecting_refusal(workdir: Path, port: int) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "signalsmith", "serve", "--port", str(port)],
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if not k.startswith("SIGNALSMITH_")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
        raise AssertionError(f"serve started on a busy port:\n{stdout}{stderr}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_second_serve_on_a_served_port_refuses_in_one_line(
    embedded_server: Callable[..., EmbeddedServer], tmp_path: Path
) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    port = free_port()
    first = embedded_server(first_dir, port)

    refused = run_serve_expecting_refusal(second_dir, port)

    assert refused.returncode != 0
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"signalsmith serve: port {port} on 127.0.0.1 is in use"), line
    assert f"PID {first.process.pid}" in line or "signalsmith serve" in line, line
    # It started nothing: no banner, no Redis, no data directory of its own.
    assert not (second_dir / ".signalsmith").exists()
    # Every request reaches the first server, which knows its key.
    key = write_key_of(first_dir)
    with httpx.Client(base_url=first.url, auth=(key, ""), timeout=30) as http:
        statuses = [http.post("/v1/track", json=track()).status_code for _ in range(20)]
    assert statuses == [200] * 20


def test_a_port_held_by_another_program_is_one_line_naming_it(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        refused = run_serve_expecting_refusal(tmp_path, port)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"signalsmith serve: port {port} on 127.0.0.1 is in use"), line
    assert f"PID {os.getpid()}" in line, line  # this test holds it


# --- item 11: the embedded Redis dies ----------------------------------------------------------


def test_a_killed_redis_is_restarted_from_its_append_only_file(
    embedded_workdir: Path, embedded_server: Callable[..., EmbeddedServer]
) -> None:
    workdir = embedded_workdir
    served = embedded_server(workdir, free_port(), file_sink_env(workdir))
    key = write_key_of(workdir)
    before = send(served.url, key, 20, event="Before The Kill")
    time.sleep(1.5)  # the append-only file is fsynced every second
    redis_pid = served.redis_pid()
    # And a client sending without a pause, across the kill: some of its events are in a sink's
    # batch, read and not yet delivered, when Redis dies.
    sender = Sender(served.url, key).start()
    wait_until(lambda: len(sender.acknowledged) >= 50, "events accepted under load")

    os.kill(redis_pid, signal.SIGKILL)

    # The health endpoints say what is wrong, naming no local path.
    seen: list[tuple[str, int, str]] = []

    def health_says_restarting() -> bool:
        for path in ("/healthz", "/readyz"):
            response = httpx.get(served.url + path, timeout=10)
            seen.append((path, response.status_code, response.text))
        return any(
            status == 503 and "redis" in text and "restart" in text for _, status, text in seen
        )

    wait_until(health_says_restarting, "/healthz to report the Redis restart", timeout=20)
    # Ingest answers 503 (or, once Redis is back, 200) without a person touching serve.
    answers: list[httpx.Response] = []

    def ingest_is_back() -> bool:
        response = httpx.post(served.url + "/v1/track", json=track(), auth=(key, ""), timeout=30)
        answers.append(response)
        return response.status_code == 200

    wait_until(ingest_is_back, "ingest to answer 200 again")
    sender.stop()
    assert served.process.poll() is None
    assert served.redis_pid() != redis_pid
    for path, _status, text in seen:
        assert str(workdir) not in text and ".sock" not in text, (path, text)
    for response in answers[:-1]:
        assert response.status_code == 503, response.text
        assert str(workdir) not in response.text and ".sock" not in response.text
    assert httpx.get(served.url + "/healthz", timeout=10).status_code == 200
    assert httpx.get(served.url + "/readyz", timeout=10).status_code == 200

    after = send(served.url, key, 20, event="After The Kill")
    # Everything acknowledged, before the kill, around it and after it, reaches the destination
    # (Redis writes its append-only file before it answers), without another restart.
    assert set(sender.other) <= {503}, sender.other
    wait_delivered(workdir, before + sender.acknowledged + after)
    log = served.output()
    assert "redis" in log.lower() and "restart" in log.lower()


# --- item 12: serve killed with SIGKILL --------------------------------------------------------


def test_after_kill_9_nothing_is_left_and_the_next_serve_starts(
    embedded_workdir: Path, embedded_server: Callable[..., EmbeddedServer]
) -> None:
    workdir = embedded_workdir
    port = free_port()
    served = embedded_server(workdir, port, file_sink_env(workdir))
    key = write_key_of(workdir)
    before = send(served.url, key, 20, event="Before Kill 9")
    time.sleep(1.5)
    children = served.children()
    assert any("redis-server" in cmd for cmd in children.values()), children
    assert len(children) >= 2, children  # Redis and Granian's worker

    os.kill(served.process.pid, signal.SIGKILL)
    served.process.wait()

    # The children die with their parent.
    wait_until(lambda: not served.leftovers(), f"the children {children} to exit")
    # The next serve on the same directory and port takes over what the dead one left.
    again = embedded_server(workdir, port, file_sink_env(workdir))
    assert again.process.poll() is None
    after = send(again.url, key, 5, event="After Kill 9")
    wait_delivered(workdir, before + after)


def test_a_live_server_holding_the_data_directory_is_named(
    embedded_workdir: Path, embedded_server: Callable[..., EmbeddedServer]
) -> None:
    workdir = embedded_workdir
    served = embedded_server(workdir, free_port())
    refused = run_serve_expecting_refusal(workdir, free_port())
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    [line] = refused.stderr.splitlines()
    assert "in use" in line and str(served.process.pid) in line, line


# --- item 13: Ctrl-C and SIGHUP ----------------------------------------------------------------


class Sender:
    """A client sending single events back to back in a thread; records what got a 200."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.acknowledged: list[str] = []
        self.other: list[int | None] = []  # the status of every other answer (None: no answer)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._send, daemon=True)

    def start(self) -> Sender:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)

    def __enter__(self) -> Sender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _send(self) -> None:
        with httpx.Client(base_url=self.url, auth=(self.key, ""), timeout=30) as http:
            while not self.stopping.is_set():
                body = track(event="Sent Continuously")
                try:
                    status: int | None = http.post("/v1/track", json=body).status_code
                except httpx.TransportError:
                    status = None
                    time.sleep(0.02)
                if status == 200:
                    self.acknowledged.append(body["messageId"])
                else:
                    self.other.append(status)


def test_ctrl_c_delivers_and_acknowledges_what_was_accepted(
    embedded_workdir: Path, embedded_server: Callable[..., EmbeddedServer]
) -> None:
    workdir = embedded_workdir
    served = embedded_server(workdir, free_port(), file_sink_env(workdir))
    key = write_key_of(workdir)
    early = send(served.url, key, 10, event="Early")
    # A client keeps sending while Ctrl-C arrives.
    with Sender(served.url, key) as sender:
        wait_until(lambda: len(sender.acknowledged) >= 5, "events accepted under load")
        last = send(served.url, key, 1, event="Just Before Ctrl-C")

        served.signal_group(signal.SIGINT)
        code = served.wait(timeout=WAIT)

    assert code == 0, served.output()
    assert "Traceback" not in served.output(), served.output()
    accepted = early + sender.acknowledged + last
    # Delivered before the server exited, not at the next start.
    missing = set(accepted) - delivered_ids(workdir)
    assert not missing, f"{len(missing)} acknowledged events were not delivered"
    # ... and acknowledged in Redis by every sink: nothing waits in a pending list.
    groups, last_id = groups_after_exit(workdir)
    assert set(groups) == {"clickhouse", "debugger", "test-file"}
    for name, group in groups.items():
        assert group["pending"] == 0, (name, group)
        assert group["last-delivered-id"] == last_id, (name, group)
    # Everything it started is gone.
    assert not served.leftovers()


def test_sighup_is_ignored_with_a_log_line(
    embedded_workdir: Path, embedded_server: Callable[..., EmbeddedServer]
) -> None:
    workdir = embedded_workdir
    served = embedded_server(workdir, free_port(), file_sink_env(workdir))
    key = write_key_of(workdir)
    worker_pids = set(served.children())

    os.kill(served.process.pid, signal.SIGHUP)

    wait_until(lambda: "SIGHUP" in served.output(), "a log line about SIGHUP")
    # Past the moment Granian would have replaced its worker (3.5 s), the same processes serve.
    time.sleep(5)
    assert served.process.poll() is None, served.output()
    assert set(served.children()) == worker_pids
    accepted = send(served.url, key, 5, event="After SIGHUP")
    wait_delivered(workdir, accepted)
    assert "Traceback" not in served.output()


def test_sighup_is_ignored_by_a_scale_out_collector_too(
    start_collector: Callable[..., Collector], redis_url: str, key_prefix: str, write_key: str
) -> None:
    collector = start_collector(
        redis_url=redis_url, key_prefix=key_prefix, write_keys={write_key: "src-hup"}
    )
    assert collector.process is not None
    workers = children_of(collector.process.pid)
    assert workers

    os.kill(collector.process.pid, signal.SIGHUP)

    wait_until(lambda: "SIGHUP ignored" in collector.log_tail(), "a log line about SIGHUP")
    time.sleep(5)  # past the moment Granian would have replaced its worker
    assert collector.process.poll() is None, collector.log_tail()
    assert children_of(collector.process.pid) == workers
    send(collector.url, write_key, 5, event="After SIGHUP")


def children_of(pid: int) -> set[int]:
    return {
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    }
