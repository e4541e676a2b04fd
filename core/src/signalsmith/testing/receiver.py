"""A real local HTTP server that records what it is sent: the far end of test destinations.

By default it answers every request 200 ``{}``. Give it ``answer`` to answer as a service
would: ``answer(request)`` returns a ``Reply`` (a status, a body, headers, a delay before
answering, or ``hang`` to never answer), or None for the default. It runs in threads, one per
request, so a slow or hanging answer never holds up the others.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request."""

    status: int = 200
    body: Any = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before answering (a slow destination).
    delay: float = 0.0
    # Never answer (until the receiver stops): a hanging destination.
    hang: bool = False

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


class Headers(dict[str, str]):
    """Request headers, looked up in any case (HTTP header names are case-insensitive)."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__((key.lower(), value) for key, value in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


class Received:
    """One request: its method, path, headers, raw and decoded body, and what it was answered."""

    def __init__(self, method: str, path: str, headers: Headers, raw: bytes, body: Any) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.raw = raw
        self.body = body
        self.status: int | None = None
        self.at = time.monotonic()

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.body.get("batch", [])) if isinstance(self.body, dict) else []

    @property
    def payloads(self) -> list[Any]:
        """What the body carries: a list's items, a Segment batch's events, or the body."""
        if isinstance(self.body, list):
            return list(self.body)
        if isinstance(self.body, dict) and isinstance(self.body.get("batch"), list):
            return list(self.body["batch"])
        return [self.body]

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


Answer = Callable[[Received], "Reply | None"]


class Receiver:
    """``with Receiver() as receiver:`` listens on a free loopback port (module docstring)."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.requests: list[Received] = []
        self.answer = answer
        lock = self._lock = threading.Lock()
        stopping = self._stopping = threading.Event()
        requests = self.requests
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                data = raw
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    data = gzip.decompress(raw)
                try:
                    body = json.loads(data or b"null")
                except ValueError:
                    body = data.decode(errors="replace")
                received = Received(
                    self.command, self.path, Headers(self.headers.items()), raw, body
                )
                try:
                    reply = (receiver.answer(received) if receiver.answer else None) or Reply()
                except Exception as error:  # a test's answer function failing: say so
                    reply = Reply(500, {"error": f"the receiver's answer raised {error!r}"})
                received.status = None if reply.hang else reply.status
                with lock:
                    requests.append(received)
                if reply.hang:
                    stopping.wait()
                    self.close_connection = True
                    return
                if reply.delay and stopping.wait(reply.delay):
                    self.close_connection = True
                    return
                content = reply.encoded()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except OSError:  # the client gave up (a timeout) before the answer
                    self.close_connection = True

            do_POST = do_PUT = do_PATCH = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every event of a Segment batch body the receiver accepted (at ``path``), in order."""
        with self._lock:
            return [
                event
                for request in self.requests
                if (path is None or request.path == path) and request.accepted
                for event in request.events
            ]

    def payloads(self, path: str | None = None) -> list[Any]:
        """Every payload the receiver accepted (at ``path``), whatever the body's shape."""
        with self._lock:
            return [
                payload
                for request in self.requests
                if (path is None or request.path == path) and request.accepted
                for payload in request.payloads
            ]

    def wait_for(
        self,
        predicate: Callable[[list[Any]], Any],
        timeout: float = 15.0,
        *,
        of: Callable[[], list[Any]] | None = None,
    ) -> list[Any]:
        """Block until ``predicate(events)`` holds (``of()`` instead of ``events()`` when
        given), returning them; AssertionError after ``timeout`` seconds."""
        read = of or self.events
        deadline = time.monotonic() + timeout
        while True:
            found = read()
            if predicate(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"not received within {timeout}s; got {found}")
            time.sleep(0.05)


@contextmanager
def receivers(*names: str) -> Iterator[dict[str, Receiver]]:
    """``with receivers("crm", "ads") as found:`` one running ``Receiver`` per name."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(Receiver()) for name in names}
