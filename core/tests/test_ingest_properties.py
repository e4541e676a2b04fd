"""Property: whatever messages a client sends, the collector never answers 5xx, and every valid
message of a batch is accepted and then found in Redis.

Hypothesis generates Segment messages of every type (valid by construction) and mutates some of
them: fields dropped or of the wrong type, odd timestamps, numbers past 64 bits or past a double,
nesting past the limit, and text strict JSON parsers refuse (NaN, lone surrogates, bytes that are
not UTF-8). They are posted alone and in batches to the real collector app with a real Redis.

The run is derandomized: the same examples every run, so CI cannot flake on a new one; it takes
a few seconds. Set SIGNALSMITH_HYPOTHESIS_EXPLORE=1 to search fresh random examples, many more
of them (locally, when changing normalisation).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import AsyncTestClient

from signalsmith.buffer import stream_key
from signalsmith.config import Settings
from signalsmith.records import Source
from signalsmith.testing import StaticKeys, collector_client
from signalsmith.testing.stream import decode_entry

KEY = "wk_property_test_5c1d"
AUTH = {"Authorization": f"Bearer {KEY}"}
TYPES = ("track", "identify", "page", "screen", "group", "alias")

EXPLORE = bool(os.environ.get("SIGNALSMITH_HYPOTHESIS_EXPLORE"))
PROPERTY_SETTINGS = settings(
    derandomize=not EXPLORE,
    max_examples=2_000 if EXPLORE else 120,
    deadline=None,
    database=None,
    # One app and one Redis serve every example: that is the point, not an accident.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


# --- valid messages -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
identifiers = st.text(min_size=1, max_size=30) | st.integers(min_value=0, max_value=2**53)
timestamps = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
).map(lambda moment: moment.isoformat())


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(TYPES))
    message: dict[str, Any] = {"type": kind}
    who = draw(st.sampled_from(["userId", "anonymousId", "both"]))
    if kind == "alias" or who in ("userId", "both"):
        message["userId"] = draw(identifiers)
    if kind != "alias" and who in ("anonymousId", "both"):
        message["anonymousId"] = draw(identifiers)
    if kind == "track":
        message["event"] = draw(st.text(min_size=1, max_size=40).filter(str.strip))
        message["properties"] = draw(json_objects)
    elif kind in ("identify", "group"):
        message["traits"] = draw(json_objects)
    elif kind in ("page", "screen"):
        message["name"] = draw(st.none() | st.text(max_size=20))
        message["properties"] = draw(json_objects)
    if kind == "group":
        message["groupId"] = draw(identifiers)
    if kind == "alias":
        message["previousId"] = draw(identifiers)
    if draw(st.booleans()):
        message["context"] = draw(json_objects)
    if draw(st.booleans()):
        message["timestamp"] = draw(timestamps)
    if draw(st.booleans()):
        message["sentAt"] = draw(timestamps)
    if draw(st.booleans()):
        message["_metadata"] = {"bundled": ["Segment.io"], "unbundled": []}
    return message


# --- mutations ------------------------------------------------------------------------------

# Raw JSON text spliced into a message in place of a placeholder value.
RAW_VALUES = st.sampled_from(
    [
        b"NaN",
        b"[Infinity, -Infinity]",
        b'"caf\\ud83d"',
        b'"\\ude00 alone"',
        b'"\xff\xfe not UTF-8 \xc3"',
        b"1e400",
        b"1" + b"0" * 400,
        b"1" + b"0" * 5000,
        b"18446744073709551616",
        b"-9223372036854775809",
    ]
) | st.integers(min_value=60, max_value=3_000).map(lambda n: b"[" * n + b"]" * n)


@st.composite
def mutated_messages(draw: st.DrawFn) -> tuple[Any, bytes | None]:
    """A message and, when a raw value replaces its placeholder, that value."""
    message = draw(valid_messages())
    mutation = draw(
        st.sampled_from(
            [
                "drop",
                "wrong_type",
                "odd_value",
                "raw",
                "not_an_object",
                "too_large",
                "odd_timestamp",
            ]
        )
    )
    if mutation == "drop":
        for name in draw(st.lists(st.sampled_from(sorted(message)), min_size=1, max_size=3)):
            message.pop(name, None)
    elif mutation == "wrong_type":
        name = draw(st.sampled_from([*sorted(message), "context", "integrations", "event"]))
        message[name] = draw(json_values)
    elif mutation == "odd_value":
        message[draw(st.sampled_from(["properties", "traits", "context", "options"]))] = {
            "v": draw(
                st.integers(min_value=2**63, max_value=10**400) | st.integers(max_value=-(2**63))
            )
        }
    elif mutation == "raw":
        where = draw(
            st.sampled_from(["properties", "context", "traits", "messageId", "timestamp", "userId"])
        )
        if where in ("properties", "context", "traits"):
            message[where] = {"v": "@@RAW@@"}
        else:
            message[where] = "@@RAW@@"
        return message, draw(RAW_VALUES)
    elif mutation == "not_an_object":
        return draw(json_values), None
    elif mutation == "too_large":
        message["padding"] = "x" * (33 * 1024)
    elif mutation == "odd_timestamp":
        message[draw(st.sampled_from(["timestamp", "sentAt", "originalTimestamp"]))] = draw(
            st.sampled_from(
                [
                    "9999-12-31T23:59:59.999Z",
                    "9999-12-31T23:00:00-05:00",
                    "0001-01-01T00:00:00+05:00",
                    "0001-01-01T00:00:00Z",
                    "last tuesday",
                    "",
                    "2026-02-30T00:00:00Z",
                ]
            )
            | st.integers()
        )
    return message, None


def encoded(message: Any, raw: bytes | None) -> bytes:
    text = json.dumps(message).encode()  # json.dumps writes NaN and big integers as they are
    return text if raw is None else text.replace(b'"@@RAW@@"', raw)


# A message of a batch: (JSON text, whether it is valid by construction, its messageId if valid).
items = st.one_of(
    valid_messages().map(lambda message: (message, None, True)),
    mutated_messages().map(lambda pair: (pair[0], pair[1], False)),
)


# --- the app --------------------------------------------------------------------------------


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    keys = StaticKeys({KEY: Source(id="src-property", name="property tests")})
    async with collector_client(settings, (keys, "keys")) as test_client:
        yield test_client


class StreamReader:
    """The events appended to a stream since the last read, by messageId."""

    def __init__(self, redis: aioredis.Redis, key_prefix: str) -> None:
        self.redis = redis
        self.stream = stream_key(key_prefix)
        self.last = "-"

    async def new_message_ids(self) -> set[str]:
        found: set[str] = set()
        while True:
            page = await self.redis.xrange(self.stream, min=self.last, max="+", count=500)
            for entry_id, fields in page:
                found.update(
                    event.message_id for event in decode_entry(entry_id, fields).fresh_events
                )
                self.last = "(" + (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
            if len(page) < 500:
                return found


def with_ids(
    batch: list[tuple[Any, bytes | None, bool]],
) -> tuple[list[bytes], list[bool], list[str | None]]:
    """Each message as JSON text with a fresh messageId (unless a mutation took it away)."""
    texts, valid, ids = [], [], []
    for message, raw, is_valid in batch:
        message_id = None
        if isinstance(message, dict) and (is_valid or "messageId" not in message):
            message_id = f"prop-{uuid.uuid4()}"
            message = {**message, "messageId": message_id}
        texts.append(encoded(message, raw))
        valid.append(is_valid)
        ids.append(message_id)
    return texts, valid, ids


def check_answer(response: Any, count: int, valid: list[bool]) -> dict[str, Any]:
    assert response.status_code < 500, response.text
    assert response.status_code == 200, response.text
    answer = response.json()
    rejected = [report["index"] for report in answer["rejected"]]
    assert len(rejected) == len(set(rejected))
    assert all(not valid[index] for index in rejected), answer["rejected"]
    assert answer["accepted"] + answer["duplicates"] + len(rejected) == count, answer
    for report in answer["rejected"]:
        assert report["code"] and report["message"]
    return answer


@PROPERTY_SETTINGS
@given(
    batch=st.lists(items, min_size=1, max_size=8),
    envelope=st.fixed_dictionaries(
        {},
        optional={
            "sentAt": timestamps | st.sampled_from(["soon", "9999-12-31T23:59:59Z", ""]),
            "context": json_objects,
            "integrations": st.dictionaries(st.text(max_size=10), st.booleans(), max_size=3),
        },
    ),
)
async def test_a_batch_keeps_every_valid_message(
    client: AsyncTestClient[Litestar],
    redis: aioredis.Redis,
    settings: Settings,
    batch: list[tuple[Any, bytes | None, bool]],
    envelope: dict[str, Any],
) -> None:
    reader = getattr(client, "reader", None) or StreamReader(redis, settings.key_prefix)
    client.reader = reader  # type: ignore[attr-defined]
    texts, valid, ids = with_ids(batch)
    rest = b"".join(b',"%s":%s' % (k.encode(), json.dumps(v).encode()) for k, v in envelope.items())
    body = b'{"batch":[' + b",".join(texts) + b"]" + rest + b"}"
    response = await client.post("/v1/batch", content=body, headers=AUTH)
    check_answer(response, len(texts), valid)
    arrived = await reader.new_message_ids()
    missing = [ids[index] for index, ok in enumerate(valid) if ok and ids[index] not in arrived]
    assert not missing, f"valid messages accepted but not in Redis: {missing}"


@PROPERTY_SETTINGS
@given(item=items, path_type=st.sampled_from([None, *TYPES]))
async def test_a_single_message_never_gets_a_5xx(
    client: AsyncTestClient[Litestar],
    redis: aioredis.Redis,
    settings: Settings,
    item: tuple[Any, bytes | None, bool],
    path_type: str | None,
) -> None:
    reader = getattr(client, "reader", None) or StreamReader(redis, settings.key_prefix)
    client.reader = reader  # type: ignore[attr-defined]
    message, raw, is_valid = item
    if is_valid and path_type is not None:
        # The path sets the type; the body's own may differ (the path wins).
        is_valid = path_type == message["type"]
    [text], _, [message_id] = with_ids([(message, raw, is_valid)])
    path = f"/v1/{path_type}" if path_type else "/api/v1/events"
    response = await client.post(path, content=text, headers=AUTH)
    assert response.status_code < 500, response.text
    if len(text) > settings.max_message_bytes:
        assert response.status_code == 413
        return
    if not isinstance(message, dict):
        # A body that is not an object is refused as a request.
        assert (response.status_code, response.json()["code"]) == (400, "invalid_json")
        return
    answer = check_answer(response, 1, [is_valid])
    if is_valid:
        assert answer["accepted"] == 1, answer
        assert message_id in await reader.new_message_ids()
