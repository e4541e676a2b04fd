"""The destination end of bench/forward.py: a bare ASGI app, served by Granian, that answers
every POST at once (or, under ``/slow``, after two seconds) and counts what it got.

    python bench/forward_receiver.py --port 9100

- ``POST <any path>``: a JSON body of events (an object, a JSON array, or a Segment batch
  ``{"batch": [...]}``) counted, answered ``200 {}``; under ``/slow`` the answer waits
  ``SLOW_SECONDS``. With ``RECORD=1`` in the environment, each event's ``messageId`` (or the
  ``id`` a mapping gives it) is kept with its arrival time (``time.time()``).
- ``GET /stats``: ``{"events", "requests"}`` per path prefix (``/fast``, ``/slow``, ...).
- ``GET /arrivals``: ``{messageId: arrival time}``; ``GET /reset`` forgets everything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from typing import Any

import msgspec

SLOW_SECONDS = 2.0
RECORD = os.environ.get("RECORD") == "1"
events: Counter[str] = Counter()
requests: Counter[str] = Counter()
arrivals: dict[str, float] = {}
decoder = msgspec.json.Decoder()
encoder = msgspec.json.Encoder()


def _items(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        return body["batch"]
    return [body]


async def _read(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Any, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if scope["method"] == "GET":
        if path == "/stats":
            await _answer(send, encoder.encode({"events": events, "requests": requests}))
        elif path == "/arrivals":
            await _answer(send, encoder.encode(arrivals))
        elif path == "/reset":
            events.clear()
            requests.clear()
            arrivals.clear()
            await _answer(send, b"{}")
        else:
            await _answer(send, b"{}", 404)
        return
    raw = await _read(receive)
    now = time.time()
    prefix = "/" + path.strip("/").split("/", 1)[0]
    items = _items(decoder.decode(raw))
    if RECORD:
        for item in items:
            key = item.get("messageId") or item.get("id") if isinstance(item, dict) else None
            if key is not None:
                arrivals[key] = now
    # Counted as they arrive: a slow answer does not hide that the request came.
    events[prefix] += len(items)
    requests[prefix] += 1
    if prefix == "/slow":
        await asyncio.sleep(SLOW_SECONDS)
    await _answer(send, b"{}")


def main() -> None:
    from signalsmith.config import Settings
    from signalsmith.server import granian_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    granian_server(
        Settings(host="127.0.0.1", port=args.port), "forward_receiver:app", factory=False
    ).serve()


if __name__ == "__main__":
    main()
