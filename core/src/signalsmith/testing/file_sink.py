"""A plugin module for tests that run real processes: a destination appending to a file.

Load it with ``SIGNALSMITH_PLUGIN_MODULES=signalsmith.testing.file_sink`` and name the file in
``SIGNALSMITH_TEST_SINK_FILE``; each delivered event becomes one JSON line (Segment's shape).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import msgspec

from signalsmith import hookimpl
from signalsmith.model import Event, to_segment_dict
from signalsmith.records import Sink


@hookimpl
def register_destinations(register: Callable[[Sink], None]) -> None:
    register(Sink(name="test-file", batch_size=100, max_wait_seconds=0.05))


@hookimpl
def deliver_events(destination: Sink, events: list[Event]) -> None:
    lines = b"".join(msgspec.json.encode(to_segment_dict(event)) + b"\n" for event in events)
    with open(os.environ["SIGNALSMITH_TEST_SINK_FILE"], "ab") as sink_file:
        sink_file.write(lines)
