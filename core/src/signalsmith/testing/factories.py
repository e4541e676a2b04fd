"""Wire-format message factories: dicts as a Segment client would send them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any


def message_id() -> str:
    return f"test-{uuid.uuid4()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _base(kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": kind,
        "messageId": message_id(),
        "userId": "user-1",
        "timestamp": _now(),
        "context": {"library": {"name": "signalsmith-tests", "version": "0"}},
    }
    message.update(overrides)
    return message


def track(event: str = "Order Completed", **overrides: Any) -> dict[str, Any]:
    return _base("track", {"event": event, "properties": {"revenue": 19.99}, **overrides})


def identify(**overrides: Any) -> dict[str, Any]:
    return _base("identify", {"traits": {"email": "a@example.com"}, **overrides})


def page(name: str = "Home", **overrides: Any) -> dict[str, Any]:
    return _base("page", {"name": name, "properties": {"path": "/"}, **overrides})


def screen(name: str = "Home", **overrides: Any) -> dict[str, Any]:
    return _base("screen", {"name": name, "properties": {}, **overrides})


def group(group_id: str = "org-1", **overrides: Any) -> dict[str, Any]:
    return _base("group", {"groupId": group_id, "traits": {"name": "Acme"}, **overrides})


def alias(previous_id: str = "anon-1", **overrides: Any) -> dict[str, Any]:
    return _base("alias", {"previousId": previous_id, **overrides})
