"""Request bodies for the ingest benchmark, as templates the load generators fill per request.

Deduplication by messageId is part of what is measured, so every request must carry messageIds
never sent before; replaying one fixed body would turn the load into duplicates. The load
generators (wrk's LuaJIT, autocannon's Node) therefore build each body from a template: fixed
text segments with a slot before each message's id, which they fill with
``<tag>-<thread>-<counter>-<index>`` (fixed width).

Gzipped bodies cannot be compressed per request on this 2-core box without the load generator
eating the server's CPU, and a pool of pre-compressed bodies would repeat. So the template is
compressed once, with each id slot as a *stored* (uncompressed) deflate block: the generator
copies its id bytes into the slot and only computes the gzip trailer's CRC-32 (zlib's crc32,
about 20 µs for 57 KB). This is valid deflate because the compressor saw placeholder bytes
(0x80-0xFF, absent from the ASCII template) in the slots, so no back-reference of the compressed
text can point into a slot; ``_check`` proves it by inflating a filled-in body.

The file format (``write_template``) is line-based so that both generators parse it in a few
lines: a header of ``key value`` lines, a blank line, then ``2 * (slots + 1)`` length-prefixed
segments: the plain text ones (for the CRC), then the wire ones.
"""

from __future__ import annotations

import base64
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

# ``<tag 6>-<thread 2>-<counter 9>-<index 3>``: fixed width, so gzip's ISIZE is fixed too.
ID_WIDTH = 23
TIMESTAMP = "2026-11-26T03:17:52.952Z"


def track_event(message_id: str, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Segment track event as analytics-python sends it: about 570 bytes of JSON."""
    event: dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "userId": "user-0001729",
        "anonymousId": "a1b2c3d4-e5f6-4711-8899-aabbccddeeff",
        "messageId": message_id,
        "timestamp": TIMESTAMP,
        "context": {
            "library": {"name": "analytics-python", "version": "2.3.3"},
            "ip": "203.0.113.9",
            "locale": "en-US",
            "page": {"path": "/checkout", "url": "https://shop.example.com/checkout"},
        },
        "properties": {
            "orderId": "ord-20261126-000042",
            "revenue": 119.97,
            "currency": "USD",
            "coupon": "WINTER10",
            "shipping": 4.99,
            "tax": 9.6,
            "products": [{"sku": "sku-1", "price": 39.99, "quantity": 3}],
            "paymentMethod": "card",
        },
        "integrations": {},
        "_metadata": {"nodeVersion": "3.11.7"},
    }
    if extra:
        event.update(extra)
    return event


@dataclass(frozen=True)
class Scenario:
    """One kind of request the benchmark sends."""

    name: str
    path: str
    events: int
    gzip: bool = False
    # How the write key travels: Basic auth (server libraries) or the body (analytics-next).
    key_in_body: bool = False
    content_type: str = "application/json"
    description: str = ""
    headers: dict[str, str] = field(default_factory=dict)


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("single", "/v1/track", 1, description="one track event per request"),
        Scenario("batch100", "/v1/batch", 100, description="100 events per /v1/batch"),
        Scenario(
            "batch100-gzip",
            "/v1/batch",
            100,
            gzip=True,
            description="the same 100-event batch, gzipped",
        ),
        Scenario(
            "browser",
            "/v1/t",
            1,
            key_in_body=True,
            content_type="text/plain",
            description="analytics-next style: text/plain, writeKey in the body",
        ),
    )
}


def _placeholder(rng: random.Random) -> bytes:
    return bytes(rng.randrange(0x80, 0x100) for _ in range(ID_WIDTH))


def body_with_placeholders(
    scenario: Scenario, write_key: str, rng: random.Random
) -> tuple[bytes, list[bytes]]:
    """The scenario's body with a unique placeholder where each messageId goes."""
    marks = [_placeholder(rng) for _ in range(scenario.events)]
    # Mark each id with a string msgspec will emit verbatim, then swap in the binary placeholder.
    names = [f"@@ID{index:05d}@@" for index in range(scenario.events)]
    if scenario.path == "/v1/batch":
        document: dict[str, Any] = {
            "batch": [track_event(name) for name in names],
            "sentAt": TIMESTAMP,
        }
    else:
        extra = {"writeKey": write_key, "sentAt": TIMESTAMP} if scenario.key_in_body else None
        document = track_event(names[0], extra=extra)
    text = msgspec.json.encode(document)
    for name, mark in zip(names, marks, strict=True):
        text = text.replace(name.encode(), mark)
    return text, marks


def _split(text: bytes, marks: list[bytes]) -> list[bytes]:
    segments = []
    rest = text
    for mark in marks:
        before, found, rest = rest.partition(mark)
        assert found, "placeholder missing from the body"
        segments.append(before)
    segments.append(rest)
    return segments


def _stored_block_header(length: int) -> bytes:
    # BFINAL=0, BTYPE=00 and the padding to the byte boundary are one zero byte; we are
    # byte-aligned because the compressed block before was ended with Z_SYNC_FLUSH.
    return b"\x00" + length.to_bytes(2, "little") + (length ^ 0xFFFF).to_bytes(2, "little")


def gzip_segments(plain: list[bytes], marks: list[bytes]) -> list[bytes]:
    """Wire segments of a gzip body whose id slots are stored blocks (see the module docstring).

    The last segment stops before the gzip trailer (CRC-32 and length of the filled-in text),
    which the generator appends.
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    wire: list[bytes] = []
    for text, mark in zip(plain, marks, strict=False):
        segment = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
        # The compressor must see the slot's bytes (its window counts them), but its output for
        # them is replaced by a stored block the generator fills with the real id.
        compressor.compress(mark)
        compressor.flush(zlib.Z_SYNC_FLUSH)
        wire.append(segment + _stored_block_header(len(mark)))
    tail = compressor.compress(plain[-1]) + compressor.flush(zlib.Z_FINISH)
    wire.append(tail[:-8])
    return wire


def fill(segments: list[bytes], ids: list[bytes]) -> bytes:
    parts: list[bytes] = []
    for segment, message_id in zip(segments, ids, strict=False):
        parts += [segment, message_id]
    parts.append(segments[-1])
    return b"".join(parts)


def gzip_body(plain: list[bytes], wire: list[bytes], ids: list[bytes]) -> bytes:
    text = fill(plain, ids)
    trailer = zlib.crc32(text).to_bytes(4, "little") + (len(text) % 2**32).to_bytes(4, "little")
    return fill(wire, ids) + trailer


def _check(scenario: Scenario, plain: list[bytes], wire: list[bytes]) -> None:
    """Fill the template as a generator would and prove the server will read what we meant."""
    ids = [f"check0-00-{n:09d}-{n % 1000:03d}".encode() for n in range(scenario.events)]
    expected = fill(plain, ids)
    body = gzip_body(plain, wire, ids) if scenario.gzip else fill(wire, ids)
    text = zlib.decompress(body, 16 + zlib.MAX_WBITS) if scenario.gzip else body
    assert text == expected, f"{scenario.name}: template does not round-trip"
    decoded = msgspec.json.decode(text)
    messages = decoded["batch"] if "batch" in decoded else [decoded]
    assert [m["messageId"].encode() for m in messages] == ids


@dataclass(frozen=True)
class Template:
    scenario: Scenario
    path: Path
    # An example of a filled body, for the report (sizes on the wire and after inflating).
    wire_bytes: int
    plain_bytes: int


def write_template(scenario: Scenario, write_key: str, directory: Path) -> Template:
    """Write the scenario's template file for the load generators and check it."""
    rng = random.Random(scenario.name)
    text, marks = body_with_placeholders(scenario, write_key, rng)
    plain = _split(text, marks)
    wire = gzip_segments(plain, marks) if scenario.gzip else plain
    _check(scenario, plain, wire)
    headers = {"Content-Type": scenario.content_type, **scenario.headers}
    if scenario.gzip:
        headers["Content-Encoding"] = "gzip"
    if not scenario.key_in_body:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    lines = [
        f"path {scenario.path}",
        f"gzip {1 if scenario.gzip else 0}",
        f"slots {len(marks)}",
        f"idwidth {ID_WIDTH}",
        f"events {scenario.events}",
        *(f"header {name}: {value}" for name, value in headers.items()),
        "",
    ]
    out = bytearray("\n".join(lines).encode() + b"\n")
    for segment in [*plain, *wire]:
        out += f"{len(segment)}\n".encode() + segment
    path = directory / f"{scenario.name}.tmpl"
    path.write_bytes(bytes(out))
    sample_ids = [b"x" * ID_WIDTH] * len(marks)
    sample = gzip_body(plain, wire, sample_ids) if scenario.gzip else fill(wire, sample_ids)
    return Template(scenario, path, len(sample), len(fill(plain, sample_ids)))
