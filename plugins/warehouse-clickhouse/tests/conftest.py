"""Fixtures for the ClickHouse warehouse tests: the real engine, through chDB.

chDB opens one data directory per process, so every test in this process shares one, each in a
database of its own (dropped afterwards). A client held for the whole session keeps the engine
loaded between tests, which saves about a second each.

The canaries are what a query must never reach from `signalsmith sql`: a file with a secret in
it, a local HTTP server and a local TCP listener that count who came, and a second database
with the secret in a table.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from signalsmith_warehouse_clickhouse import ClickHouseWarehouse, WarehouseConfig
from signalsmith_warehouse_clickhouse.naming import quote


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import clickhouse_connect

    path = tmp_path_factory.mktemp("chdb")
    keeper = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    try:
        yield path
    finally:
        keeper.close()


@pytest.fixture
def database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def open_warehouse(
    chdb_dir: Path, database: str
) -> AsyncIterator[Callable[..., Awaitable[ClickHouseWarehouse]]]:
    """Open warehouses on the session's chDB directory, in this test's database."""
    import clickhouse_connect

    opened: list[ClickHouseWarehouse] = []

    async def open_(**options: Any) -> ClickHouseWarehouse:
        config = WarehouseConfig(dsn=f"chdb://{chdb_dir}", database=database, **options)
        warehouse = ClickHouseWarehouse(config, config.target(chdb_dir))
        await warehouse.open()
        opened.append(warehouse)
        return warehouse

    yield open_
    for warehouse in opened:
        await warehouse.close()
    cleaner = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    try:
        cleaner.command(f"DROP DATABASE IF EXISTS {quote(database)}")
    finally:
        cleaner.close()


CANARY_SECRET = f"canary-secret-{uuid.uuid4().hex}"


@pytest.fixture
def canary_file(tmp_path: Path) -> Path:
    """A file the engine could read, holding ``CANARY_SECRET`` (as a TSV with a header)."""
    path = tmp_path / "canary.tsv"
    path.write_text(f"{CANARY_SECRET}\n{CANARY_SECRET}\n")
    return path


class HttpCanary:
    """A local HTTP server that counts the requests it gets and answers each with
    ``CANARY_SECRET`` as a JSON line (so a query that reached it would have something to show)."""

    def __init__(self) -> None:
        self.requests = 0
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                canary.requests += 1
                body = f'{{"secret": "{CANARY_SECRET}"}}\n'.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpCanary:
    """A local TCP listener that counts the connections it accepts, closing each at once."""

    def __init__(self) -> None:
        self.connections = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def http_canary() -> Iterator[HttpCanary]:
    canary = HttpCanary()
    yield canary
    canary.close()


@pytest.fixture
def tcp_canary() -> Iterator[TcpCanary]:
    canary = TcpCanary()
    yield canary
    canary.close()


@pytest.fixture
def other_database(chdb_dir: Path, database: str) -> Iterator[str]:
    """A second database beside the warehouse's, with ``CANARY_SECRET`` in its table ``canary``."""
    import clickhouse_connect

    name = f"{database}_other"
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    try:
        client.command(f"CREATE DATABASE {quote(name)}")
        client.command(
            f"CREATE TABLE {quote(name)}.canary (secret String) ENGINE = MergeTree ORDER BY secret"
        )
        client.command(f"INSERT INTO {quote(name)}.canary VALUES ('{CANARY_SECRET}')")
        yield name
    finally:
        client.command(f"DROP DATABASE IF EXISTS {quote(name)}")
        client.close()


class Canaries(NamedTuple):
    """All of them, for one test."""

    file: Path
    http: HttpCanary
    tcp: TcpCanary
    database: str
    secret: str = CANARY_SECRET

    def assert_untouched(self, *outputs: str) -> None:
        assert self.http.requests == 0, "a query reached the local HTTP server"
        assert self.tcp.connections == 0, "a query connected to the local TCP listener"
        for output in outputs:
            assert self.secret not in output, "a query read the canary file or database"


@pytest.fixture
def canaries(
    canary_file: Path, http_canary: HttpCanary, tcp_canary: TcpCanary, other_database: str
) -> Canaries:
    return Canaries(canary_file, http_canary, tcp_canary, other_database)
