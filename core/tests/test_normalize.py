"""Unit tests of normalize.py: request parsing, per-message checks, ids, timestamps, merging."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from signalsmith.model import Alias, Group, Identify, Page, Screen, Track
from signalsmith.normalize import MAX_MESSAGE_ID_LENGTH, NormalisedBatch, normalise_messages
from signalsmith.parsing import ParsedRequest, RequestError, parse_request, parse_time
from signalsmith.testing import alias, group, identify, page, screen, track

RECEIVED = datetime(2026, 11, 26, 12, 0, 0, 500_000, tzinfo=UTC)
MAX_MESSAGES = 2500
MAX_BYTES = 32 * 1024


def parse(body: Any, *, batch: bool | None = None, raw: bool = False) -> ParsedRequest:
    data = body if raw else json.dumps(body).encode()
    return parse_request(data, batch=batch, max_messages=MAX_MESSAGES, max_message_bytes=MAX_BYTES)


def normalise(
    body: Any,
    *,
    batch: bool | None = None,
    path_type: str | None = None,
    client_ip: str | None = None,
) -> NormalisedBatch:
    return normalise_messages(
        parse(body, batch=batch),
        path_type=path_type,
        received_at=RECEIVED,
        source_id="src-1",
        max_message_bytes=MAX_BYTES,
        client_ip=client_ip,
    )


def one(body: Any, **options: Any) -> Any:
    """The single event a one-message body normalises to (fails on a rejection)."""
    result = normalise(body, **options)
    assert result.rejected == []
    assert len(result.events) == 1
    return result.events[0]


def rejection(message: Any) -> tuple[str, str | None]:
    """The code and reported messageId of a message that must be rejected inside a batch."""
    result = normalise({"batch": [message]}, batch=True)
    assert result.events == []
    assert len(result.rejected) == 1
    assert result.rejected[0].index == 0
    assert result.rejected[0].message, "a rejection must say what is wrong"
    return result.rejected[0].code, result.rejected[0].message_id


# --- parse_request --------------------------------------------------------------------------


def test_single_message_body_is_one_message_with_its_write_key() -> None:
    request = parse({**track(), "writeKey": "wk_1"}, batch=False)
    assert not request.is_batch
    assert len(request.messages) == 1
    assert request.write_key == "wk_1"


def test_events_endpoint_detects_the_shape() -> None:
    assert not parse(track()).is_batch
    assert parse({"batch": [track(), identify()]}).is_batch
    assert len(parse({"batch": [track(), identify()]}).messages) == 2
    # `"batch": null` is no batch at all: the body is one message.
    assert not parse({**track(), "batch": None}).is_batch


def test_batch_endpoint_requires_a_batch_array() -> None:
    for body in ({"type": "track"}, {"batch": {"a": 1}}, {"batch": "x"}):
        with pytest.raises(RequestError) as caught:
            parse(body, batch=True)
        assert caught.value.code == "invalid_batch"
        assert not caught.value.too_large


@pytest.mark.parametrize(
    "body", [b"", b"{", b"not json", b'{"a": 1', b"\xff\xfe", b"[1, 2]", b'"text"', b"12"]
)
def test_invalid_json_is_a_400(body: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse(body, raw=True)
    assert caught.value.code == "invalid_json"
    assert not caught.value.too_large
    assert caught.value.message


def test_non_string_write_key_is_ignored() -> None:
    assert parse({**track(), "writeKey": 12}).write_key is None
    assert parse({"batch": [], "writeKey": None}).write_key is None


def test_batch_message_count_limit() -> None:
    small = {"type": "track", "userId": "u", "event": "e"}
    assert len(parse({"batch": [small] * MAX_MESSAGES}, batch=True).messages) == MAX_MESSAGES
    with pytest.raises(RequestError) as caught:
        parse({"batch": [small] * (MAX_MESSAGES + 1)}, batch=True)
    assert caught.value.code == "too_many_messages"
    assert caught.value.too_large


def test_single_message_size_limit() -> None:
    message = track()
    base = len(json.dumps({**message, "pad": ""}).encode())
    exact = {**message, "pad": "x" * (MAX_BYTES - base)}
    assert len(json.dumps(exact).encode()) == MAX_BYTES
    assert len(parse(exact, batch=False).messages) == 1
    with pytest.raises(RequestError) as caught:
        parse({**exact, "pad": exact["pad"] + "x"}, batch=False)
    assert caught.value.code == "message_too_large"
    assert caught.value.too_large


def test_envelope_fields() -> None:
    request = parse(
        {
            "batch": [track()],
            "sentAt": "2026-11-26T03:17:53.452421+00:00",
            "context": {"ip": "203.0.113.1"},
            "integrations": {"All": False},
            "writeKey": "wk_2",
        },
        batch=True,
    )
    assert request.sent_at == datetime(2026, 11, 26, 3, 17, 53, 452421, tzinfo=UTC)
    assert request.context == {"ip": "203.0.113.1"}
    assert request.integrations == {"All": False}
    assert request.write_key == "wk_2"


def test_unusable_envelope_fields_are_ignored_not_fatal() -> None:
    request = parse(
        {"batch": [track()], "sentAt": "yesterday", "context": [1], "integrations": "x"},
        batch=True,
    )
    assert request.sent_at is None
    assert request.context is None
    assert request.integrations is None


# --- parse_time -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T03:17:44.656Z", datetime(2026, 11, 26, 3, 17, 44, 656_000, tzinfo=UTC)),
        ("2026-11-26T05:17:44.656+02:00", datetime(2026, 11, 26, 3, 17, 44, 656_000, tzinfo=UTC)),
        ("2026-11-26T03:17:44.656-05:30", datetime(2026, 11, 26, 8, 47, 44, 656_000, tzinfo=UTC)),
        ("2026-11-26T03:17:53.452421+00:00", datetime(2026, 11, 26, 3, 17, 53, 452421, tzinfo=UTC)),
        ("2026-11-26T03:17:53Z", datetime(2026, 11, 26, 3, 17, 53, tzinfo=UTC)),
        # A naive timestamp is read as UTC.
        ("2026-11-26T03:17:53.1", datetime(2026, 11, 26, 3, 17, 53, 100_000, tzinfo=UTC)),
    ],
)
def test_parse_time_formats(text: str, expected: datetime) -> None:
    parsed = parse_time(text, "timestamp")
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == timedelta(0)


def test_parse_time_none_is_absent() -> None:
    assert parse_time(None, "timestamp") is None


# --- per-message checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (track(userId=None), "missing_user_id"),
        ({k: v for k, v in track().items() if k != "userId"}, "missing_user_id"),
        (track(userId="", anonymousId=""), "missing_user_id"),
        ({k: v for k, v in track().items() if k != "event"}, "missing_event"),
        (track(event=""), "missing_event"),
        (track(event="   "), "missing_event"),
        (track(event=7), "invalid_field"),
        ({k: v for k, v in group().items() if k != "groupId"}, "missing_group_id"),
        ({k: v for k, v in alias().items() if k != "previousId"}, "missing_previous_id"),
        (alias(userId=None), "missing_user_id"),
        (track(type="purchase"), "invalid_type"),
        (track(type=3), "invalid_type"),
        ({k: v for k, v in track().items() if k != "type"}, "missing_type"),
        (track(messageId="m" * (MAX_MESSAGE_ID_LENGTH + 1)), "message_id_too_long"),
        (track(timestamp="last tuesday"), "invalid_timestamp"),
        (track(timestamp=1764126000), "invalid_timestamp"),
        (track(properties=[1, 2]), "invalid_field"),
        (track(properties="x"), "invalid_field"),
        (identify(traits=["a"]), "invalid_field"),
        (track(context="web"), "invalid_field"),
        (track(integrations=True), "invalid_field"),
        (track(userId={"id": 1}), "invalid_field"),
        (track(userId=True), "invalid_field"),
        (page(name={"x": 1}), "invalid_field"),
        ("a string", "not_an_object"),
        (["a", "list"], "not_an_object"),
        (None, "not_an_object"),
        (42, "not_an_object"),
    ],
)
def test_each_invalid_message_has_its_own_code(message: Any, code: str) -> None:
    assert rejection(message)[0] == code


def test_rejection_reports_the_message_id() -> None:
    message = track(event=None)
    assert rejection(message) == ("missing_event", message["messageId"])
    long_id = "m" * (MAX_MESSAGE_ID_LENGTH + 1)
    assert rejection(track(messageId=long_id)) == ("message_id_too_long", long_id)
    assert rejection("text") == ("not_an_object", None)


def test_message_id_of_exactly_100_characters_is_kept() -> None:
    message_id = "m" * MAX_MESSAGE_ID_LENGTH
    assert one(track(messageId=message_id)).message_id == message_id


def test_oversized_item_in_a_batch_is_rejected_alone() -> None:
    big = track(properties={"blob": "x" * MAX_BYTES})
    small = [track(), identify()]
    result = normalise({"batch": [small[0], big, small[1]]}, batch=True)
    assert [event.message_id for event in result.events] == [m["messageId"] for m in small]
    assert result.indexes == [0, 2]
    assert [(r.index, r.code) for r in result.rejected] == [(1, "message_too_large")]


def test_unreadable_sent_at_only_disables_skew_correction() -> None:
    message = track(timestamp="2026-01-01T00:00:00Z", sentAt="soon")
    result = normalise({"batch": [message]}, batch=True)
    assert result.rejected == []
    [event] = result.events
    assert event.sent_at is None
    assert event.timestamp == event.original_timestamp


def test_mixed_batch_keeps_valid_messages_and_reports_by_index() -> None:
    valid = [track(), identify(), page(), screen(), group(), alias()]
    invalid = [track(event=None), "nope", identify(userId=None)]
    messages = [valid[0], invalid[0], valid[1], valid[2], invalid[1], valid[3]]
    messages += [valid[4], invalid[2], valid[5]]
    result = normalise({"batch": messages}, batch=True)
    assert [event.message_id for event in result.events] == [m["messageId"] for m in valid]
    assert result.indexes == [0, 2, 3, 5, 6, 8]
    assert [(r.index, r.code) for r in result.rejected] == [
        (1, "missing_event"),
        (4, "not_an_object"),
        (7, "missing_user_id"),
    ]


# --- what a normalised event holds ------------------------------------------------------------


def test_each_type_becomes_its_event_class_with_its_fields() -> None:
    messages = [
        track("Signed Up", properties={"plan": "pro"}),
        identify(traits={"email": "a@example.com"}),
        page("Pricing", category="Docs", properties={"path": "/pricing"}),
        screen("Home", category="App"),
        group("org-9", traits={"name": "Acme"}),
        alias("anon-9"),
    ]
    events = normalise({"batch": messages}, batch=True).events
    assert [type(event) for event in events] == [Track, Identify, Page, Screen, Group, Alias]
    t, i, p, s, g, a = events
    assert (t.event, t.properties) == ("Signed Up", {"plan": "pro"})
    assert i.traits == {"email": "a@example.com"}
    assert (p.name, p.category, p.properties) == ("Pricing", "Docs", {"path": "/pricing"})
    assert (s.name, s.category) == ("Home", "App")
    assert (g.group_id, g.traits) == ("org-9", {"name": "Acme"})
    assert a.previous_id == "anon-9"
    for event, message in zip(events, messages, strict=True):
        assert event.type == message["type"]
        assert event.message_id == message["messageId"]
        assert event.user_id == "user-1"
        assert event.project_id == "src-1"
        assert event.received_at == RECEIVED


def test_path_type_overrides_the_body_type() -> None:
    event = one(track(type="identify"), batch=False, path_type="track")
    assert isinstance(event, Track)
    event = one(identify(type="track"), batch=False, path_type="identify")
    assert isinstance(event, Identify)
    # A single-message endpoint does not need a type in the body at all.
    body = {k: v for k, v in group().items() if k != "type"}
    assert isinstance(one(body, batch=False, path_type="group"), Group)


def test_message_id_is_generated_when_missing() -> None:
    body = {k: v for k, v in track().items() if k != "messageId"}
    first = one(body)
    second = one(body)
    assert first.message_id and second.message_id
    assert first.message_id != second.message_id
    assert len(first.message_id) <= MAX_MESSAGE_ID_LENGTH
    assert one(track(messageId=None)).message_id
    assert one(track(messageId="")).message_id


def test_numeric_ids_become_strings() -> None:
    event = one(track(userId=42, messageId=7, anonymousId=1.5))
    assert (event.user_id, event.message_id, event.anonymous_id) == ("42", "7", "1.5")


def test_explicit_nulls_are_absent_values() -> None:
    # analytics-python sends null for every argument left out.
    event = one(track(anonymousId=None, integrations=None, context=None, properties=None))
    assert event.anonymous_id is None
    assert event.properties == {}
    event = one(identify(userId=None, anonymousId="anon-1", traits=None))
    assert (event.user_id, event.anonymous_id, event.traits) == (None, "anon-1", {})
    event = one(page(name=None, category=None))
    assert (event.name, event.category) == (None, None)
    event = one(screen(name=None, category=None, timestamp=None))
    assert (event.name, event.category) == (None, None)
    assert event.timestamp == RECEIVED
    event = one(alias(anonymousId=None))
    assert event.previous_id == "anon-1"


def test_received_at_is_the_servers() -> None:
    event = one(track(receivedAt="2001-01-01T00:00:00Z", projectId="spoofed"))
    assert event.received_at == RECEIVED
    assert event.project_id == "src-1"
    assert "receivedAt" not in event.extra
    assert "projectId" not in event.extra


def test_skew_correction_with_per_event_sent_at() -> None:
    # The device clock is an hour fast; the event happened 2.25 s before it was sent.
    sent = RECEIVED + timedelta(hours=1)
    original = sent - timedelta(seconds=2.25)
    event = one(track(timestamp=_z(original), sentAt=_z(sent)))
    assert event.original_timestamp == original
    assert event.sent_at == sent
    assert event.timestamp == RECEIVED - (sent - original)
    assert event.timestamp == RECEIVED - timedelta(seconds=2.25)


def test_skew_correction_falls_back_to_the_envelope_sent_at() -> None:
    sent = RECEIVED - timedelta(minutes=10)  # the device clock is ten minutes slow
    original = sent - timedelta(seconds=30)
    body = {"batch": [track(timestamp=_z(original))], "sentAt": _z(sent)}
    event = one(body, batch=True)
    assert event.original_timestamp == original
    assert event.timestamp == RECEIVED - timedelta(seconds=30)


def test_per_event_sent_at_wins_over_the_envelope() -> None:
    original = RECEIVED - timedelta(days=1)
    own_sent = original + timedelta(seconds=5)
    body = {
        "batch": [track(timestamp=_z(original), sentAt=_z(own_sent))],
        "sentAt": _z(original + timedelta(hours=3)),
    }
    event = one(body, batch=True)
    assert event.timestamp == RECEIVED - timedelta(seconds=5)


def test_without_sent_at_the_timestamp_is_the_original() -> None:
    original = datetime(2020, 2, 29, 23, 59, 59, 999_000, tzinfo=UTC)
    event = one(track(timestamp="2020-03-01T01:59:59.999+02:00"))
    assert event.original_timestamp == original
    assert event.timestamp == original
    assert event.sent_at is None


def test_without_a_timestamp_the_server_time_is_used() -> None:
    body = {k: v for k, v in track().items() if k != "timestamp"}
    event = one({**body, "sentAt": _z(RECEIVED + timedelta(hours=5))})
    assert event.timestamp == RECEIVED
    assert event.original_timestamp is None


def test_original_timestamp_key_is_read_when_timestamp_is_absent() -> None:
    original = RECEIVED - timedelta(hours=2)
    body = {k: v for k, v in track().items() if k != "timestamp"}
    event = one({**body, "originalTimestamp": _z(original)})
    assert event.original_timestamp == original


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T03:17:52.952Z",
        "2026-11-26T03:17:52.952+00:00",
        "2026-11-26T05:17:52.952+02:00",
        "2026-11-26T03:17:52.952000Z",
        "2026-11-25T22:17:52.952-05:00",
    ],
)
def test_timestamp_formats_of_every_client(text: str) -> None:
    event = one(track(timestamp=text))
    assert event.original_timestamp == datetime(2026, 11, 26, 3, 17, 52, 952_000, tzinfo=UTC)


def test_write_key_is_never_kept() -> None:
    event = one({**track(), "writeKey": "wk_secret"})
    assert "writeKey" not in event.extra
    event = one({"batch": [{**track(), "writeKey": "wk_secret"}], "writeKey": "wk_secret"})
    assert "writeKey" not in event.extra


def test_unknown_top_level_fields_are_kept_in_extra() -> None:
    metadata = {"bundled": ["Segment.io"], "unbundled": []}
    event = one(track(_metadata=metadata, options={"x": 1}, version=2, channel="server"))
    assert event.extra == {
        "_metadata": metadata,
        "options": {"x": 1},
        "version": 2,
        "channel": "server",
    }
    # Spec fields are never duplicated into extra.
    assert not {"type", "event", "userId", "messageId", "timestamp", "properties"} & set(
        event.extra
    )


def test_batch_context_and_integrations_are_merged_into_items() -> None:
    body = {
        "batch": [
            track(context={"ip": "198.51.100.7"}, integrations={"Mixpanel": False}),
            identify(context=None, integrations=None),
        ],
        "context": {"ip": "203.0.113.1", "locale": "en-GB"},
        "integrations": {"All": True, "Mixpanel": True},
    }
    first, second = normalise(body, batch=True).events
    # The item's own value wins over the envelope's.
    assert first.context["ip"] == "198.51.100.7"
    assert first.context["locale"] == "en-GB"
    assert first.integrations == {"All": True, "Mixpanel": False}
    assert second.context["ip"] == "203.0.113.1"
    assert second.context["locale"] == "en-GB"
    assert second.integrations == {"All": True, "Mixpanel": True}


def test_missing_library_is_filled_in() -> None:
    event = one(track(context={}))
    assert event.context["library"] == {"name": "unknown", "version": "unknown"}
    event = one(track(context={"library": {"name": "analytics-python", "version": "2.4.0"}}))
    assert event.context["library"]["name"] == "analytics-python"


def test_client_ip_is_stamped_only_when_given_and_never_overrides() -> None:
    assert "ip" not in one(track()).context
    assert one(track(), client_ip="192.0.2.1").context["ip"] == "192.0.2.1"
    event = one(track(context={"ip": "198.51.100.2"}), client_ip="192.0.2.1")
    assert event.context["ip"] == "198.51.100.2"


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
