"""Small plugins for tests: a fixed key table, and a sink that records what it receives."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from signalsmith import Credentials, DeliveryReport, Event, Sink, Source, hookimpl


class StaticKeys:
    """An authenticator over a fixed ``{write_key: Source}`` table."""

    def __init__(self, keys: dict[str, Source]) -> None:
        self.keys = keys

    @hookimpl
    def authenticate(self, credentials: Credentials) -> Source | None:
        for key in credentials.write_keys:
            source = self.keys.get(key)
            if source is not None:
                return source
        return None


def capture_sink_plugin(
    name: str = "capture",
    *,
    deliver: Callable[[list[Event]], Any] | None = None,
    **sink_options: Any,
) -> SimpleNamespace:
    """A plugin object registering one destination sink that appends batches to ``.batches``.

    ``deliver`` replaces the default behaviour: raise from it to make the sink fail, or return
    a ``DeliveryReport`` to settle events one by one (the batch is recorded either way, unless
    it raised).
    """
    batches: list[list[Event]] = []

    class CaptureSink:
        @hookimpl
        def register_destinations(self, register: Callable[[Sink], None]) -> None:
            register(Sink(name=name, **sink_options))

        @hookimpl
        async def deliver_events(
            self, destination: Sink, events: list[Event]
        ) -> DeliveryReport | None:
            result = None
            if deliver is not None:
                result = deliver(events)
                if hasattr(result, "__await__"):
                    result = await result
            batches.append(list(events))
            return result

    return SimpleNamespace(plugin=CaptureSink(), batches=batches, name=name)
