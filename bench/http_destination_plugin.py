"""A destination for the benchmark only: POSTs each batch, as JSON, to a local HTTP receiver.

    SIGNALSMITH_PLUGIN_MODULES=http_destination_plugin   (with bench/ on PYTHONPATH)
    BENCH_DESTINATION_URL=http://127.0.0.1:PORT/         where to POST
    BENCH_DESTINATION_BATCH_SIZE, BENCH_DESTINATION_MAX_WAIT_SECONDS   (defaults: the core's)

Not a product plugin: it exists so bench/ingest_e2e.py can time an event from its 200 to its
arrival at a destination through the real worker (consumer group, batching, delivery, XACK). The
body is what a Segment-style destination receives: ``{"batch": [event, ...]}`` with each event
as ``to_segment_dict`` makes it. One httpx client per process, opened where sinks run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import msgspec

from signalsmith import hookimpl
from signalsmith.model import Event, to_segment_dict
from signalsmith.records import Sink, SinkError

if TYPE_CHECKING:
    from signalsmith.runtime import Runtime

SINK_NAME = "bench-http"
_clients: list[httpx.AsyncClient] = []
_encoder = msgspec.json.Encoder()


@hookimpl
def register_destinations(register: Callable[[Sink], None]) -> None:
    defaults = Sink(name=SINK_NAME)
    register(
        Sink(
            name=SINK_NAME,
            batch_size=int(os.environ.get("BENCH_DESTINATION_BATCH_SIZE", defaults.batch_size)),
            max_wait_seconds=float(
                os.environ.get("BENCH_DESTINATION_MAX_WAIT_SECONDS", defaults.max_wait_seconds)
            ),
        )
    )


@hookimpl
async def startup(runtime: Runtime) -> None:
    if runtime.delivers:
        _clients.append(httpx.AsyncClient(timeout=10))


@hookimpl
async def shutdown(runtime: Runtime) -> None:
    while _clients:
        await _clients.pop().aclose()


@hookimpl
async def deliver_events(destination: Sink, events: list[Event]) -> None:
    if not _clients:
        raise SinkError(f"{destination.name}: no HTTP client in this process")
    body = _encoder.encode({"batch": [to_segment_dict(event) for event in events]})
    try:
        answer = await _clients[-1].post(
            os.environ["BENCH_DESTINATION_URL"],
            content=body,
            headers={"content-type": "application/json"},
        )
    except httpx.HTTPError as error:
        raise SinkError(f"{destination.name}: {error}") from error
    if answer.status_code >= 300:
        raise SinkError(f"{destination.name}: the receiver answered {answer.status_code}")
