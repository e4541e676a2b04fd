"""What a user's function is given and may raise (the contract of
``shared/reference/plans-config-functions.md`` section 5.4, RudderStack's semantics).

    def transform_event(event: dict, ctx: Context) -> dict | list[dict] | None
    def transform_batch(events: list[dict], ctx: Context) -> list[dict]

Events are Segment's JSON as dicts (camelCase keys). A dict replaces the event, a list fans it
out, ``None`` or ``[]`` drops it; ``raise DropEvent("why")`` drops it with a reason. A batch
function returns the events to keep; an output pairs with its input by ``messageId``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any


class DropEvent(Exception):  # the name Segment's functions use
    """Raised by a function to drop the event it was called with (the message is the reason)."""


class RetryError(Exception):
    """Segment's and Jitsu's "try again later". The collector cannot hold an event for later,
    so it counts as an error (``on_error`` decides); it exists so imported functions load."""


class Context:
    """What a function is handed beside the event: ``source``, ``settings`` (the instance's
    ``settings`` mapping), ``log``, ``instance``, ``workspace_version``, ``deadline``
    (``time.monotonic()`` value the batch's budget ends at) and ``cancelled`` (set once the
    budget is spent: a long function may stop early). ``ctx.metadata(event)`` (and ``ctx(event)``,
    for RudderStack's ``metadata(event)``) gives RudderStack's metadata fields."""

    __slots__ = (
        "cancelled",
        "deadline",
        "destination",
        "instance",
        "log",
        "settings",
        "source",
        "workspace_version",
    )

    def __init__(
        self,
        *,
        source: dict[str, str],
        settings: dict[str, Any],
        instance: str,
        workspace_version: int | None,
        deadline: float,
        cancelled: threading.Event,
    ) -> None:
        self.source = source
        self.settings = settings
        self.instance = instance
        self.workspace_version = workspace_version
        self.deadline = deadline
        self.cancelled = cancelled
        self.destination = None  # source-scoped: no destination
        self.log = logging.getLogger(f"signalsmith.function.{instance}")

    @property
    def props(self) -> dict[str, Any]:
        """Jitsu's name for ``settings``."""
        return self.settings

    def metadata(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "sourceId": self.source["id"],
            "sourceName": self.source["name"],
            "messageId": event.get("messageId"),
            "eventName": event.get("event") or event.get("name"),
            "eventType": event.get("type"),
            "receivedAt": event.get("receivedAt"),
            "transformationId": self.instance,
        }

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.metadata(event)
