"""The bare baseline for bench/ingest.py: raw ASGI on Granian, msgspec decode, XADD, 200.

    .venv/bin/python bench/baseline_app.py --port 8100 [--workers 1] [--append xadd|coalesced]

No auth, normalisation, dedupe or plugins: only what any collector must do (read the body,
inflate gzip, decode and validate the JSON, append it to a Redis stream, answer). It is served by
``signalsmith.server.granian_server``, the function ``signalsmith serve`` uses, so the Granian
flags are the collector's by construction.

``xadd`` (the issue's definition, and the headline denominator) awaits one XADD per request;
``coalesced`` gathers the XADDs of concurrent requests into one pipelined round trip, as the
collector's buffer does, and is reported beside it so the comparison is also made against a
baseline that uses the collector's own main trick. Either way the 200 is sent only after Redis
confirmed the entry. Each entry holds the raw body plus ``n``, its number of events, the field
the harness counts to check that accepted equals stored.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from typing import Any

import msgspec
import redis.asyncio as aioredis


class Message(msgspec.Struct):
    type: str | None = None
    event: str | None = None
    userId: str | None = None
    anonymousId: str | None = None
    messageId: str | None = None
    timestamp: str | None = None
    properties: dict[str, Any] = {}
    context: dict[str, Any] = {}


class Batch(msgspec.Struct):
    batch: list[Message]


message_decoder = msgspec.json.Decoder(Message)
batch_decoder = msgspec.json.Decoder(Batch)
STREAM = os.environ.get("SIGNALSMITH_KEY_PREFIX", "signalsmith") + ":events"
COALESCED = os.environ.get("BENCH_BASELINE_APPEND", "xadd") == "coalesced"
OK = b'{"success":true}'
redis: aioredis.Redis
pending: list[tuple[bytes, int, asyncio.Future[None]]] = []
wake = asyncio.Event()


async def flusher() -> None:
    global pending
    while True:
        await wake.wait()
        wake.clear()
        while pending:
            batch, pending = pending, []
            try:
                pipe = redis.pipeline(transaction=False)
                for body, count, _ in batch:
                    pipe.execute_command("XADD", STREAM, "*", "n", count, "d", body)
                await pipe.execute()
                for *_, future in batch:
                    future.done() or future.set_result(None)
            except Exception as error:
                for *_, future in batch:
                    future.done() or future.set_exception(error)


async def append(body: bytes, count: int) -> None:
    if not COALESCED:
        await redis.execute_command("XADD", STREAM, "*", "n", count, "d", body)
        return
    future = asyncio.get_running_loop().create_future()
    pending.append((body, count, future))
    wake.set()
    await future


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global redis
    if scope["type"] == "lifespan":
        flush_task = None
        while (message := await receive())["type"] != "lifespan.shutdown":
            redis = aioredis.Redis.from_url(os.environ["SIGNALSMITH_REDIS_URL"])
            flush_task = asyncio.create_task(flusher()) if COALESCED else None
            await send({"type": "lifespan.startup.complete"})
        if flush_task is not None:
            flush_task.cancel()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "GET":  # the paced load generator's first request per connection
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    if (b"content-encoding", b"gzip") in scope["headers"]:
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
    try:
        if scope["path"] == "/v1/batch":
            count = len(batch_decoder.decode(body).batch)
        else:
            message_decoder.decode(body)
            count = 1
    except msgspec.DecodeError:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await append(body, count)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"16")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": OK})


def main() -> None:
    import argparse
    import sys
    from pathlib import Path

    from signalsmith.config import Settings
    from signalsmith.server import granian_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--append", choices=["xadd", "coalesced"], default="xadd")
    args = parser.parse_args()
    os.environ["BENCH_BASELINE_APPEND"] = args.append
    # Granian's workers import the target by name: make this directory importable for them.
    here = str(Path(__file__).resolve().parent)
    sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    settings = Settings(host=args.host, port=args.port, http_workers=args.workers)
    granian_server(settings, "baseline_app:app", factory=False).serve()


if __name__ == "__main__":
    main()
