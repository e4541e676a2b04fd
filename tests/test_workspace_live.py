"""The workspace across real processes: two `signalsmith serve` collectors and a `signalsmith
worker`, all following documents applied with `signalsmith config` in yet other processes.

Every switch is observed through behaviour: a transform chain that drops or tags events (the
collectors' answers), a destination that receives events or not (a local HTTP server).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis

from signalsmith.embedded import free_port
from signalsmith.testing import Receiver

PLUGIN_MODULES = "signalsmith.testing.env_keys,signalsmith.testing.workspace_types"
ADMIN_TOKEN = "ssadm_workspace_live_test"
# Long enough to be unmistakable in logs and Redis, never used anywhere else.
SECRET = "hooktoken-" + uuid.uuid4().hex
# How long a switch may take on a loaded, shared machine; the design is a pub/sub message (at
# once) with a one-second poll behind it. The measured times are printed.
SWITCH_DEADLINE = 10.0


def base_env(redis_url: str, key_prefix: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}
    env.update(
        {
            "SIGNALSMITH_REDIS_URL": redis_url,
            "SIGNALSMITH_KEY_PREFIX": key_prefix,
            "SIGNALSMITH_PLUGIN_MODULES": PLUGIN_MODULES,
            # No installed entry point takes part: the test's own plugins only.
            "SIGNALSMITH_LOAD_PLUGINS": "signalsmith.testing.env_keys",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class WorkerProcess:
    """`python -m signalsmith worker`, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "signalsmith", "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalsmith", "config", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def document(receiver: Receiver, *, transform: str, hook: str, path: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        sources:
          web:
            transforms: [{transform}]
            destinations: [{hook}]
        transforms:
          drop-checkout: {{type: drop-event, settings: {{event: Checkout}}}}
          tag: {{type: tag, settings: {{property: via, value: workspace}}}}
        destinations:
          {hook}:
            type: http-post
            settings:
              url: "{receiver.url}{path}"
              token: "${{HOOK_TOKEN}}"
        """
    )


def send(collector_url: str, write_key: str, event: str) -> httpx.Response:
    return httpx.post(
        f"{collector_url}/v1/track",
        json={"userId": "u1", "event": event, "messageId": uuid.uuid4().hex},
        auth=(write_key, ""),
        timeout=30,
    )


def checkout_dropped(collector_url: str, write_key: str) -> bool:
    answer = send(collector_url, write_key, "Checkout")
    assert answer.status_code == 200, answer.text
    return bool(answer.json()["dropped"])


def wait_until(condition: Callable[[], bool], what: str) -> float:
    """Seconds until ``condition()`` held; AssertionError after SWITCH_DEADLINE."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > SWITCH_DEADLINE:
            raise AssertionError(f"{what}: not within {SWITCH_DEADLINE}s")
        time.sleep(0.02)
    return time.monotonic() - started


def redis_holds(redis_url: str, prefix: str, needle: str) -> bool:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*"):
            kind = client.type(key).decode()
            values: list[Any] = []
            if kind == "string":
                values = [client.get(key)]
            elif kind == "hash":
                values = list(client.hgetall(key).values())
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "stream":
                values = [v for _, fields in client.xrange(key) for v in fields.values()]
            if any(needle.encode() in value for value in values if isinstance(value, bytes)):
                return True
        return False
    finally:
        client.close()


def test_applied_documents_reach_every_process_roll_back_and_keep_secrets(
    start_collector: Callable[..., Any],
    start_worker: Callable[[dict[str, str]], WorkerProcess],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    env = base_env(redis_url, key_prefix)
    web_key, other_key = f"wk_web_{uuid.uuid4().hex[:8]}", f"wk_other_{uuid.uuid4().hex[:8]}"
    keys = {web_key: "web", other_key: "other"}
    collector_env = {
        "SIGNALSMITH_PLUGIN_MODULES": PLUGIN_MODULES,
        "SIGNALSMITH_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    with Receiver() as receiver:
        collectors = [
            start_collector(
                redis_url=redis_url, key_prefix=key_prefix, write_keys=keys, extra_env=collector_env
            )
            for _ in range(2)
        ]
        worker = start_worker({**env, "HOOK_TOKEN": SECRET, "SIGNALSMITH_WORKER_BLOCK_MS": "100"})
        urls = [collector.url for collector in collectors]

        # No workspace yet: every source is accepted and nothing is transformed.
        for url in urls:
            assert not checkout_dropped(url, web_key)
            assert send(url, other_key, "Anything").status_code == 200

        v1 = tmp_path / "v1.yaml"
        v1.write_text(document(receiver, transform="drop-checkout", hook="hook", path="/one"))
        applied = config(env, "apply", str(v1), "-m", "first")
        assert applied.returncode == 0, applied.stderr
        assert "applied" in applied.stdout and "version 1" in applied.stdout
        took = [wait_until(lambda u=u: checkout_dropped(u, web_key), f"v1 at {u}") for u in urls]
        print(f"collectors switched to version 1 after {took} s")
        for url in urls:
            refused = send(url, other_key, "Anything")
            assert refused.status_code == 403
            assert refused.json()["code"] == "unknown_source"
            assert "source 'other' is not in the workspace" in refused.json()["message"]
        assert send(urls[0], web_key, "Order One").status_code == 200
        receiver.wait_for(lambda events: any(e["event"] == "Order One" for e in events))
        [first] = [r for r in receiver.requests if r.path == "/one"]
        assert first.headers["Authorization"] == f"Bearer {SECRET}"

        # Version 2: another chain, and the destination replaced by another one.
        v2 = tmp_path / "v2.yaml"
        v2.write_text(document(receiver, transform="tag", hook="hook2", path="/two"))
        assert config(env, "apply", str(v2)).returncode == 0
        took = [
            wait_until(lambda u=u: not checkout_dropped(u, web_key), f"v2 at {u}") for u in urls
        ]
        print(f"collectors switched to version 2 after {took} s")
        started = time.monotonic()

        def delivered_to_two() -> bool:
            send(urls[1], web_key, "Order Two")
            return any(e["event"] == "Order Two" for e in receiver.events("/two"))

        wait_until(delivered_to_two, "the worker delivering to hook2")
        print(f"the worker delivered to hook2 after {time.monotonic() - started:.2f} s")
        assert all(e["properties"].get("via") == "workspace" for e in receiver.events("/two"))
        assert "Order Two" not in [e["event"] for e in receiver.events("/one")]

        # Rollback: version 3 is version 1 again, and the behaviour with it.
        rolled = config(env, "rollback", "1")
        assert rolled.returncode == 0, rolled.stderr
        assert "as version 3" in rolled.stdout
        for url in urls:
            wait_until(lambda u=url: checkout_dropped(u, web_key), f"v3 at {url}")
        send(urls[0], web_key, "Order Three")
        receiver.wait_for(lambda events: any(e["event"] == "Order Three" for e in events))
        assert "Order Three" in [e["event"] for e in receiver.events("/one")]

        # An invalid document changes nothing, and says every error with its line.
        bad = tmp_path / "bad.yaml"
        bad.write_text("version: 1\nsources:\n  web: {transforms: [nope]}\n  web: {}\n")
        refused_apply = config(env, "apply", str(bad))
        assert refused_apply.returncode == 1
        assert "key 'web' is written twice in this mapping (first on line 3) (line 4)" in (
            refused_apply.stderr
        )
        assert "nothing was applied" in refused_apply.stderr
        time.sleep(1.5)  # longer than a poll: a switch would have happened
        for url in urls:
            assert checkout_dropped(url, web_key)
            ready = httpx.get(f"{url}/readyz", timeout=10).json()
            assert ready["workspace_version"] == 3

        # Two applies racing from the same base: one wins, the other is told it is stale.
        racing = [
            subprocess.Popen(
                [sys.executable, "-m", "signalsmith", "config", "apply", str(path), "--base", "3"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for path in (v1.with_name("race-a.yaml"), v1.with_name("race-b.yaml"))
            if path.write_text(v2.read_text().replace("hook2", path.stem)) or True
        ]
        outcomes = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in racing]
        assert sorted(code for code, _ in outcomes) == [0, 1], outcomes
        [stale] = [text for code, text in outcomes if code == 1]
        assert "based on version 3, but the current version is 4" in stale

        # The secret is in none of: config show, the admin API, any log, Redis.
        shown = config(env, "show", "--version", "1")
        assert "${HOOK_TOKEN}" in shown.stdout and SECRET not in shown.stdout + shown.stderr
        admin = httpx.get(
            f"{urls[0]}/api/v1/admin/config",
            params={"version": 1},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        assert admin.status_code == 200 and "${HOOK_TOKEN}" in admin.json()["text"]
        assert SECRET not in admin.text
        status = httpx.get(
            f"{urls[0]}/api/v1/admin/status",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        ).json()
        assert status["workspace"]["version"] == 4
        worker.stop()
        for collector in collectors:
            collector.stop()
        logs = [worker.log_path.read_text(), *(c.log_path.read_text() for c in collectors)]
        assert "workspace version 4 in use" in logs[0]
        assert all(SECRET not in log for log in logs)
        assert not redis_holds(redis_url, key_prefix, SECRET)


def test_serve_on_the_embedded_defaults_applies_the_local_workspace(
    embedded_workdir: Path, embedded_server: Callable[..., Any]
) -> None:
    (embedded_workdir / "signalsmith.yaml").write_text(
        "version: 1\n"
        "sources:\n"
        "  dev: {transforms: [drop-checkout]}\n"
        "transforms:\n"
        "  drop-checkout: {type: drop-event, settings: {event: Checkout}}\n"
    )
    port = free_port()
    served = embedded_server(
        embedded_workdir,
        port,
        {"SIGNALSMITH_PLUGIN_MODULES": "signalsmith.testing.workspace_types"},
    )
    try:
        assert "Workspace: signalsmith.yaml is version 1 (applied now)" in served.banner
        write_key = served.field("Development write key")
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/track",
            json={"userId": "u1", "event": "Checkout"},
            auth=(write_key, ""),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["dropped"][0]["reason"] == "dropped_by_test"
    finally:
        served.stop()
