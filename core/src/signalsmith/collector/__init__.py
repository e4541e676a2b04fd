"""The collector: the HTTP face of the pipeline (Litestar on Granian).

- ``app``: the Litestar app, its lifespan, health, browser settings and admin routes;
- ``ingest``: the raw ASGI handler of every Segment path, and the HTTP edge (statuses);
- ``body``: reading a body (encodings, size limit, read deadline);
- ``http``: CORS and JSON answers written by hand;
- ``health``, ``browser``: what the health endpoints and analytics-next's settings say.
"""

from __future__ import annotations

from signalsmith.collector.app import CollectorApp, create_app

__all__ = ["CollectorApp", "create_app"]
