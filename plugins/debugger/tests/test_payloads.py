"""What the debugger keeps of an event or a raw message: JSON, write keys hidden, size capped."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest

from signalsmith import Identify, Track
from signalsmith_debugger.payloads import (
    HIDDEN,
    event_payload,
    message_payload,
    message_summary,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def order(**properties: object) -> Track:
    return Track(
        message_id="m-1",
        received_at=NOW,
        timestamp=NOW,
        user_id="ada",
        event="Order Completed",
        properties=dict(properties),
        project_id="web",
    )


def shown_json(shown: object) -> dict:
    return json.loads(msgspec.json.encode(shown.value))  # type: ignore[attr-defined]


def test_a_small_event_is_kept_as_it_is() -> None:
    event = order(price=3)
    shown = event_payload(event, cap=8192)
    assert shown == (event, 0, False)  # no copy: it is encoded with its record
    body = shown_json(shown)
    assert body["messageId"] == "m-1"
    assert body["properties"] == {"price": 3}
    assert body["type"] == "track"


@pytest.mark.parametrize("field", ["writeKey", "write_key"])
def test_write_keys_are_hidden_at_any_depth_in_events(field: str) -> None:
    shown = event_payload(
        order(**{field: "wk-live-1234567", "cart": {"items": [{field: "wk-live-1234567"}]}}),
        cap=8192,
    )
    assert b"wk-live-1234567" not in msgspec.json.encode(shown.value)
    body = shown_json(shown)
    assert body["properties"][field] == HIDDEN
    assert body["properties"]["cart"]["items"][0][field] == HIDDEN


def test_a_raw_single_message_body_loses_its_write_key() -> None:
    raw = json.dumps(
        {"writeKey": "wk-secret-999999", "type": "track", "event": "Signed Up", "userId": "u1"}
    ).encode()
    shown, value = message_payload(raw, cap=8192)
    assert b"wk-secret-999999" not in msgspec.json.encode(shown.value)
    assert shown.value["writeKey"] == HIDDEN
    summary, message_id = message_summary(value)
    assert summary[:3] == ("track", "Signed Up", "u1")
    assert message_id is None


def test_a_payload_past_the_cap_is_shortened_to_valid_json_within_it() -> None:
    event = order(
        description="x" * 20_000,
        items=[{"sku": f"sku-{n}", "name": "y" * 300} for n in range(500)],
        nested={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {}}}}}}}}}}},
    )
    full = len(msgspec.json.encode(event))
    shown = event_payload(event, cap=4096)
    assert shown.truncated
    assert shown.size == full
    assert len(msgspec.json.encode(shown.value)) <= 4096
    body = shown_json(shown)  # still the event's shape
    assert body["messageId"] == "m-1"
    assert body["properties"]["description"].startswith("xxx")
    assert body["properties"]["description"].endswith("characters)")


def test_nothing_fits_then_the_size_is_said() -> None:
    raw = json.dumps({f"{n:04d}-" + "k" * 100: n for n in range(5000)}).encode()
    shown, _ = message_payload(raw, cap=256)
    assert shown.truncated
    assert len(msgspec.json.encode(shown.value)) <= 256
    assert str(len(raw)) in shown.value["(truncated)"]


def test_a_message_that_is_not_json_is_shown_as_text() -> None:
    shown, value = message_payload(b"not json \xff at all", cap=8192)
    assert value is None
    assert shown.value.startswith("not json")


def test_summaries_shorten_client_strings() -> None:
    long_name = "E" * 5000
    stored = msgspec.to_builtins(msgspec.structs.replace(order(), event=long_name))
    (kind, name, user, anonymous), message_id = message_summary(stored)
    assert (kind, user, anonymous, message_id) == ("track", "ada", None, "m-1")
    assert name is not None and name.startswith("EEE") and len(name) < 300
    raw_summary, message_id = message_summary(
        {"type": "identify", "userId": 42, "messageId": "m-9"}
    )
    assert raw_summary == ("identify", None, "42", None)
    assert message_id == "m-9"
    identify = Identify(message_id="m-2", received_at=NOW, timestamp=NOW, anonymous_id="anon")
    assert message_summary(msgspec.to_builtins(identify))[0] == ("identify", None, None, "anon")
