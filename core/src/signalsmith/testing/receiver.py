"""A real local HTTP server that records what it is sent: the far end of test destinations."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Received:
    """One request: its path, headers and decoded JSON body."""

    def __init__(self, path: str, headers: dict[str, str], body: Any) -> None:
        self.path = path
        self.headers = headers
        self.body = body

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.body.get("batch", [])) if isinstance(self.body, dict) else []


class Receiver:
    """``with Receiver() as receiver:`` listens on a free loopback port, answering 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        lock = self._lock = threading.Lock()
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode(errors="replace")
                with lock:
                    requests.append(Received(self.path, dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every event received (at ``path``), in arrival order."""
        with self._lock:
            return [
                event
                for request in self.requests
                if path is None or request.path == path
                for event in request.events
            ]

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Block until ``predicate(events)`` holds, returning the events; AssertionError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if predicate(events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"not received within {timeout}s; got {events}")
            time.sleep(0.05)
