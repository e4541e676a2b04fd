"""The fast path of normalize.py decides exactly as the general path, only sooner.

``_fast_event`` may decline a message (None), never decide differently: for every message it
accepts, the Event must equal what ``normalise_message`` makes of the same bytes.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from signalsmith.json_input import JsonProblem, decode_json
from signalsmith.normalize import Completion, _fast_event, _Invalid, normalise_message
from signalsmith.parsing import ParsedRequest, parse_request
from signalsmith.testing import alias, group, identify, page, screen, track

RECEIVED = datetime(2026, 11, 26, 12, 0, 0, 500_000, tzinfo=UTC)
SENT = "2026-11-26T13:00:00.250Z"


def nested(levels: int) -> Any:
    """``levels`` levels of objects and arrays (an object outermost)."""
    value: Any = {}
    for wraps_left in range(levels - 1, 0, -1):
        value = {"a": value} if wraps_left % 2 else [value]
    return value


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


MESSAGES: list[dict[str, Any]] = [
    track(),
    identify(),
    page(),
    screen(),
    group(),
    alias(),
    track(_metadata={"bundled": ["Segment.io"]}),
    track(_metadata=None),
    track(anonymousId="anon-9", userId=None),
    track(userId="", anonymousId="anon-9"),
    track(properties=None, context=None, integrations=None),
    track(context={}),
    track(context={"ip": "198.51.100.2", "library": {"name": "x", "version": "1"}}),
    track(integrations={"Mixpanel": False}),
    track(timestamp="2026-11-26T05:17:52.952+02:00"),
    track(timestamp="2026-11-26T03:17:53.1"),
    track(timestamp=None, originalTimestamp="2026-11-26T03:17:53Z"),
    track(timestamp=None),
    track(sentAt=SENT),
    track(sentAt=None),
    track(messageId=None),
    track(messageId=""),
    track(messageId="m" * 100),
    track(writeKey="wk", receivedAt="2001-01-01T00:00:00Z", projectId="spoofed"),
    identify(traits=None),
    page(name=None, category=None),
    page(name="Home", category="Docs"),
    screen(properties=None),
    group(traits={"plan": "pro"}),
    alias(anonymousId=None),
    {k: v for k, v in track().items() if k != "type"},
    # Messages the fast path must hand on (or decide identically if it takes them).
    track(event=""),
    track(event="  "),
    track(event=7),
    track(userId=None),
    track(userId=42, messageId=7),
    track(messageId="m" * 101),
    track(timestamp="last tuesday"),
    track(timestamp="2026-11-26 03:17:53"),
    track(sentAt="soon"),
    track(properties=[1]),
    track(context="web"),
    track(traits={"a": 1}),
    track(options={"x": 1}, channel="server"),
    identify(properties={"a": 1}),
    page(name=3),
    group(groupId=None),
    alias(previousId=None),
    alias(userId=None),
    track(type="purchase"),
    # Numbers at and past what msgpack holds (-2**63 .. 2**64 - 1), and past a double.
    track(properties={"n": 2**63 - 1, "m": -(2**63)}),
    track(properties={"n": 2**63}),
    track(properties={"n": 2**64 - 1}),
    track(properties={"n": 2**64}),
    track(context={"n": [-(2**63) - 1]}),
    identify(traits={"n": 10**400}),
    track(properties={"f": 1.7976931348623157e308, "g": 5e-324}),
    # What json.dumps writes that strict JSON does not allow (read as null and U+FFFD).
    track(properties={"f": float("nan"), "g": float("inf")}),
    track(properties={"s": "half an emoji \ud83d"}),
    # Nesting around the typed decoders' depth (8 with the message), and the limit (64).
    track(properties=nested(6)),
    track(properties=nested(7)),
    track(properties=nested(8)),
    track(context=nested(7), integrations=nested(7)),
    track(writeKey=nested(2), receivedAt=[nested(4)], projectId=nested(70)),
    identify(traits=nested(30)),
    track(_metadata=nested(63)),
    track(properties=nested(64)),
    group(traits=nested(200)),
    # Timestamps whose UTC value or skew correction falls past year 9999 or before year 1.
    track(timestamp="9999-12-31T23:59:59.999Z", sentAt="2026-11-26T11:00:00Z"),
    track(timestamp="9999-12-31T23:59:59.999Z", sentAt=SENT),
    track(timestamp="0001-01-01T00:00:00Z", sentAt="2999-01-01T00:00:00Z"),
    track(timestamp="9999-12-31T23:00:00-05:00"),
    track(timestamp="0001-01-01T01:00:00+05:00"),
    track(sentAt="9999-12-31T23:00:00-05:00"),
]

ENVELOPES: list[dict[str, Any]] = [
    {},
    {"sentAt": SENT},
    {"context": {"ip": "203.0.113.1", "locale": "en-GB"}, "integrations": {"All": True}},
]


def _request(envelope: dict[str, Any], message: dict[str, Any]) -> ParsedRequest:
    body = json.dumps({"batch": [message], **envelope}).encode()
    return parse_request(body, batch=True, max_messages=10, max_message_bytes=32 * 1024)


def _fast(request: ParsedRequest, raw: Any, path_type: str | None, **options: Any) -> Any:
    completion = Completion(
        request, options["received_at"], options["source_id"], options["client_ip"]
    )
    return _fast_event(raw, path_type=path_type, completion=completion)


def _general(request: ParsedRequest, raw: bytes, path_type: str | None, **options: Any) -> Any:
    completion = Completion(
        request, options["received_at"], options["source_id"], options["client_ip"]
    )
    try:
        return normalise_message(decode_json(raw), path_type=path_type, completion=completion)
    except (_Invalid, JsonProblem) as problem:
        return problem.code


CASES = list(
    itertools.product(
        range(len(MESSAGES)), range(len(ENVELOPES)), [None, "track", "page"], [None, "192.0.2.1"]
    )
)


@pytest.mark.parametrize(("message", "envelope", "path_type", "client_ip"), CASES)
def test_fast_path_agrees_with_the_general_path(
    message: int, envelope: int, path_type: str | None, client_ip: str | None
) -> None:
    request = _request(ENVELOPES[envelope], MESSAGES[message])
    [raw] = request.messages
    options = {
        "path_type": path_type,
        "received_at": RECEIVED,
        "source_id": "src-1",
        "client_ip": client_ip,
    }
    fast = _fast(request, raw, **options)
    if fast is None:
        return
    general = _general(request, bytes(raw), **options)
    assert not isinstance(general, str), f"the general path rejects it: {general}"
    if not MESSAGES[message].get("messageId"):
        # Both generate an id; only its shape can be compared.
        assert fast.message_id.startswith("ss-") and general.message_id.startswith("ss-")
        general = msgspec.structs.replace(general, message_id=fast.message_id)
    assert fast == general
    assert type(fast) is type(general)


def test_common_messages_take_the_fast_path() -> None:
    # The first 31 messages are well-formed (the last of them needs its type from the path).
    for message in MESSAGES[:31]:
        request = _request({"sentAt": SENT}, message)
        [raw] = request.messages
        path_type = None if "type" in message else "track"
        event = _fast(request, raw, path_type, received_at=RECEIVED, source_id="s", client_ip=None)
        assert event is not None, message


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (track(properties={"n": 2**64}), {"n": 1.8446744073709552e19}),
        (track(properties={"n": [2**63]}), {"n": [2**63]}),
        (track(properties=nested(9)), nested(9)),
        (track(properties=nested(63)), nested(63)),
        (track(properties={"n": 10**400}), "number_out_of_range"),
        (track(properties=nested(64)), "nesting_too_deep"),
    ],
    ids=["2**64", "2**63", "depth-10", "depth-64", "10**400", "depth-65"],
)
def test_what_the_typed_decoders_cannot_hold_takes_the_general_path(
    message: dict[str, Any], expected: Any
) -> None:
    request = _request({}, message)
    [raw] = request.messages
    options = {"path_type": None, "received_at": RECEIVED, "source_id": "s", "client_ip": None}
    assert _fast(request, raw, **options) is None
    general = _general(request, bytes(raw), **options)
    if isinstance(expected, str):
        assert general == expected
    else:
        assert general.properties == expected


def test_nesting_in_these_cases_is_counted_as_the_limit_counts_it() -> None:
    # The message is the first level: `properties=nested(63)` makes 64, the most allowed.
    assert depth(track(properties=nested(63))) == 64
    assert depth(nested(7)) == 7


def test_skew_correction_on_the_fast_path() -> None:
    original = RECEIVED + timedelta(hours=1) - timedelta(seconds=2)
    message = track(timestamp=original.isoformat())
    request = _request({"sentAt": (RECEIVED + timedelta(hours=1)).isoformat()}, message)
    [raw] = request.messages
    event = _fast(request, raw, None, received_at=RECEIVED, source_id="s", client_ip=None)
    assert event is not None
    assert event.timestamp == RECEIVED - timedelta(seconds=2)
