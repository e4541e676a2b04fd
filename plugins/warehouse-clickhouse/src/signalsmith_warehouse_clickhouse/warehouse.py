"""The ClickHouse warehouse: writes batches of events into Segment's tables, evolving them.

One class serves both targets through clickhouse-connect: ``chdb://`` runs the ClickHouse engine
in this process (chDB), ``http(s)://`` talks to a server. Its clients are blocking, so every
call runs on a thread of this warehouse's own, never on the event loop: one thread writes
(chDB sessions are not thread-safe, and the schema cache is then touched by one thread only),
a few others answer read-only queries, each in a read-only session of its own, so that a slow
query does not hold up the next; the engine stops a query past its time or memory limit, or
when the caller gives up on it.

A batch is written in four steps: name the tables of new event names (within the caps on event
tables per source and on new ones per batch); turn events into rows; bring each table's schema
up to what its rows need (create it, add columns, widen integer columns that meet floats) and
cast every value to its column, setting aside what does not fit; then one insert per table,
plus one into ``discards``, each as JSON lines ClickHouse parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import msgspec

from signalsmith import Event, Track, ViolationRecord
from signalsmith_warehouse_clickhouse.config import Target, WarehouseConfig
from signalsmith_warehouse_clickhouse.naming import (
    DISCARDS_TABLE,
    EVENT_TABLES_TABLE,
    VIOLATIONS_TABLE,
    event_table_candidates,
    quote,
)
from signalsmith_warehouse_clickhouse.readonly import NotReadOnly, checked_statement
from signalsmith_warehouse_clickhouse.rows import (
    LOADED_AT,
    PROFILE_TABLES,
    TIMESTAMP,
    Discard,
    Flattener,
    Row,
    event_rows,
    fixed_columns,
    untabled_properties,
)
from signalsmith_warehouse_clickhouse.values import (
    AS_IT_IS,
    CLICKHOUSE_TYPES,
    INT64_MAX,
    INT64_MIN,
    Conflict,
    Kind,
    cast,
    infer,
    is_date_type,
    kind_of_type,
    merged_kind,
    sent_as,
    text_of,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("signalsmith.warehouse_clickhouse")

T = TypeVar("T")

DISCARD_COLUMNS: dict[str, str] = {
    "table_name": "String",
    "column_name": "String",
    "key_path": "Array(String)",
    "row_id": "String",
    "message_id": "String",
    "value": "String",
    "value_type": "String",
    "column_type": "String",
    "reason": "String",
    "received_at": TIMESTAMP,
    "discarded_at": LOADED_AT,
}
# Every value set aside is a row of its own: one call can set aside several values for one
# column of one row (keys that snake-case alike; two identifies of one user in one request), and
# only a redelivery of the same value may merge with it. The release before ordered by the first
# four alone; `_open_writer` extends such a table in place.
DISCARDS_ORDER_BY = ("table_name", "column_name", "row_id", "received_at", "message_id", "key_path")
# One row per violation of an event a contract found fault with (`plugins/contracts`); a blocked
# event is kept whole in `event`, its only copy.
VIOLATION_COLUMNS: dict[str, str] = {
    "id": "String",
    "source_id": "String",
    "event_type": "String",
    "event_name": "String",
    "message_id": "String",
    "handling": "String",
    "plan": "String",
    "event_version": "Nullable(Int64)",
    "violation_type": "String",
    "rule": "String",
    "path": "String",
    "expected": "String",
    "actual": "String",
    "description": "String",
    "event": "String",
    "received_at": TIMESTAMP,
    "loaded_at": LOADED_AT,
}
# How many recent inserts per table ClickHouse remembers by their deduplication token, so that
# a batch written again (a retry after a partial failure) is skipped before it makes a row.
DEDUPLICATION_WINDOW = 1000
# How ClickHouse reads the JSON lines of an insert: timestamps as ISO-8601 with their zone
# (msgspec writes datetimes that way), and floats exactly as written (its default parser may
# be off by one unit in the last place). Parsed on one thread and without merging duplicate
# ids within the block, which saved a fifth of the engine's time per row: queries read with
# FINAL, which merges them anyway.
JSON_INSERT_SETTINGS: dict[str, Any] = {
    "date_time_input_format": "best_effort",
    "precise_float_parsing": 1,
    "input_format_parallel_parsing": 0,
    "optimize_on_insert": 0,
}
# Values of types JSON has no notation for (IP addresses read back from a column changed by
# hand, say) are written as their text, which is how ClickHouse reads them.
_json_lines = msgspec.json.Encoder(enc_hook=str)
# Why a track has no table of its own (`discards.reason`): its source has the most event tables
# it may have, or its batch made the most new ones it may make.
EVENT_TABLE_LIMIT = "event_table_limit"
NEW_TABLE_LIMIT = "new_table_limit"
# A source's calls left without a table are logged at most this often per source and reason.
UNTABLED_WARNING_SECONDS = 60.0
# Values per IN (...) list when looking rows up by id.
LOOKUP_CHUNK = 1000
# Most rows a read-only query returns.
QUERY_ROW_LIMIT = 10_000
CANCELLED = "the query was cancelled: its client went away, or the server is stopping"
# A table's columns are read again after this long, so a change made by hand or by another
# writer is seen within it (the writer's own changes are seen at once).
SCHEMA_TTL_SECONDS = 60.0


class WarehouseUnavailable(Exception):
    """The warehouse cannot be opened (locked by another process, unreachable, missing)."""


class QueryError(Exception):
    """A read-only query that ClickHouse refused or could not run; the message is its reason."""


class QueryResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a read-only query returned, in JSON-friendly values."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    # More rows matched than were returned.
    truncated: bool = False


class _ReaderSession:
    """A read-only session, and the mark its queries carry (their ``log_comment``), by which
    KILL QUERY finds them from another session."""

    __slots__ = ("client", "mark", "settings")

    def __init__(self, client: Client, mark: str, settings: dict[str, Any]) -> None:
        self.client = client
        self.mark = mark
        # Sent with every query (a server's); chDB's are set on the session itself.
        self.settings = settings

    def ask(self, sql: str) -> Any:
        """The one value ``sql`` returns."""
        return self.client.query(sql, settings=self.settings or None).result_rows[0][0]


class _RunningQuery:
    """A query's hold on a reader session, so that another thread can stop it in the engine."""

    __slots__ = ("cancelled", "lock", "session")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.session: _ReaderSession | None = None
        self.cancelled = False


class WriteReport(msgspec.Struct, frozen=True, kw_only=True):
    """Rows written per table by one batch, and values set aside in ``discards``."""

    rows: dict[str, int]
    discards: int


def literal(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _literals(texts: Iterable[str]) -> str:
    return ", ".join(literal(text) for text in texts)


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _token(table: str, ids: Iterable[str]) -> str:
    digest = hashlib.sha256(table.encode())
    for item in ids:
        digest.update(b"\x00" + item.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def plain(value: Any) -> Any:
    """A query result value as JSON can carry it (timestamps as ISO-8601 text)."""
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        # JSON readers lose precision past 2^53; ClickHouse integers can be far larger.
        return value if -(2**53) <= value <= 2**53 else str(value)
    if isinstance(value, datetime):
        # Milliseconds, as the timestamp columns keep them, unless there is more to show.
        spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
        if value.tzinfo is not None:
            return value.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")
        return value.isoformat(timespec=spec)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple | set):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class ClickHouseWarehouse:
    """Writes events into one ClickHouse database and answers read-only queries on it."""

    def __init__(
        self,
        config: WarehouseConfig,
        target: Target,
        *,
        query_row_limit: int = QUERY_ROW_LIMIT,
    ) -> None:
        self.config = config
        self.target = target
        self.database = target.database
        self.query_row_limit = query_row_limit
        # Where queries run: the same place, or as the reader user SIGNALSMITH_WAREHOUSE_QUERY_DSN
        # names.
        self.reader_target = config.reader_target(target)
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="signalsmith-ch-write")
        self._read_threads = ThreadPoolExecutor(
            config.query_concurrency, thread_name_prefix="signalsmith-ch-read"
        )
        # Stops queries in the engine: a thread of its own, so that stopping one never waits
        # behind the queries it is to stop.
        self._cancel_thread = ThreadPoolExecutor(1, thread_name_prefix="signalsmith-ch-cancel")
        self._writer: Client | None = None
        # Read-only sessions not in use; at most one per read thread is ever open.
        self._idle_readers: list[_ReaderSession] = []
        self._readers_lock = threading.Lock()
        self._readers_closed = False
        # The session KILL QUERY runs in (on the cancel thread).
        self._killer: _ReaderSession | None = None
        # Queries `query` is waiting for, stopped by `close`.
        self._running: set[_RunningQuery] = set()
        # Columns (name -> ClickHouse type) of each table this process has seen; a table is
        # read from system.columns the first time, then kept up to date by our own DDL.
        self._tables: dict[str, dict[str, str]] = {}
        self._tables_read_at: dict[str, float] = {}
        self.schema_ttl_seconds = SCHEMA_TTL_SECONDS
        # The kinds of those columns, with the column dict they were worked out from.
        self._table_kinds: dict[str, tuple[dict[str, str], ColumnKinds]] = {}
        # Event name -> its table, as recorded in `_event_tables`.
        self._event_tables: dict[str, str] = {}
        # Column names of the key paths events bring, worked out once.
        self._flattener = Flattener()
        # (source, reason) -> when calls left without a table were last logged.
        self._untabled_warned_at: dict[tuple[str, str], float] = {}

    def __repr__(self) -> str:
        return f"ClickHouseWarehouse({self.target.display}, database={self.database!r})"

    # --- the async surface ------------------------------------------------------------------

    async def _on(self, thread: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(thread, call)

    async def open(self) -> None:
        """Connect for writing and create the database; done by the first write otherwise."""
        await self._on(self._write_thread, self._open_writer)

    async def write(self, events: list[Event]) -> WriteReport:
        """Write one batch (see the module docstring); raises if nothing of it may be relied on."""
        return await self._on(self._write_thread, partial(self.write_sync, events))

    async def write_violations(self, records: list[ViolationRecord]) -> int:
        """Write the rows of ``records`` into ``violations``; returns how many."""
        return await self._on(self._write_thread, partial(self.write_violations_sync, records))

    async def query(self, sql: str, *, limit: int | None = None) -> QueryResult:
        """Run one read-only statement, duplicates merged away (``FINAL`` on every table).

        Cancelling the task that awaits it (its HTTP client went away) stops it in the engine.
        """
        running = _RunningQuery()
        self._running.add(running)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._read_threads, partial(self._query, sql, limit, running)
            )
        except asyncio.CancelledError:
            await loop.run_in_executor(self._cancel_thread, partial(self._cancel, running))
            raise
        finally:
            self._running.discard(running)

    async def close(self) -> None:
        await self._on(self._write_thread, self._close_writer)
        running = list(self._running)
        await self._on(self._cancel_thread, partial(self._close_readers, running))
        self._write_thread.shutdown(wait=False)
        self._read_threads.shutdown(wait=False)
        self._cancel_thread.shutdown(wait=False)

    def close_sync(self) -> None:
        """``close`` for callers without an event loop that used the ``*_sync`` methods."""
        self._close_writer()
        self._close_readers([])
        self._write_thread.shutdown(wait=False)
        self._read_threads.shutdown(wait=False)
        self._cancel_thread.shutdown(wait=False)

    # --- connections --------------------------------------------------------------------------

    def _connect(
        self, *, database: str | None, target: Target | None = None, receive_timeout: float = 300
    ) -> Client:
        import clickhouse_connect

        target = target or self.target
        try:
            if target.kind == "chdb":
                return clickhouse_connect.get_client(
                    dsn=target.dsn, database=database, tz_mode="aware"
                )
            return clickhouse_connect.get_client(
                dsn=target.dsn,
                database=database or "default",
                tz_mode="aware",
                connect_timeout=10,
                send_receive_timeout=receive_timeout,
            )
        except Exception as error:
            raise WarehouseUnavailable(self._explain(error)) from error

    def _explain(self, error: BaseException) -> str:
        text = str(error)
        if self.target.kind == "chdb" and (
            "already running" in text or _locked_by_another_process(self.target.path)
        ):
            return (
                f"the embedded warehouse {self.target.path} is open in another process (chDB lets "
                "one process hold a directory): a running `signalsmith serve`, or a "
                "`signalsmith worker` that runs this sink. Query it with `signalsmith sql` "
                "(through the server), stop the other process, or give processes that do not "
                "run the warehouse SIGNALSMITH_BLOCK_PLUGINS=warehouse-clickhouse"
            )
        if self.target.kind == "chdb" and "different path" in text:
            return (
                f"this process already has another chDB directory open, and chDB allows one "
                f"per process; cannot also open {self.target.path}"
            )
        return f"cannot open the warehouse {self.target.display}: {text}"

    def _open_writer(self) -> Client:
        if self._writer is not None:
            return self._writer
        if self.target.kind == "chdb" and self.target.path is not None:
            self.target.path.mkdir(parents=True, exist_ok=True)
        client = self._connect(database=None)
        try:
            client.command(f"CREATE DATABASE IF NOT EXISTS {quote(self.database)}")
            self._create_table(
                client, DISCARDS_TABLE, DISCARD_COLUMNS, {}, "discarded_at", DISCARDS_ORDER_BY
            )
            self._migrate_discards(client)
            # Which table each event name got: names that snake-case alike get different
            # tables, and the choice must outlive this process. `source_id` is the source
            # whose call claimed it, which the per-source cap counts.
            client.command(
                f"CREATE TABLE IF NOT EXISTS {self._qualified(EVENT_TABLES_TABLE)} "
                "(event_text String, table_name String, claimed_at DateTime64(6, 'UTC'), "
                "source_id String) "
                "ENGINE = ReplacingMergeTree(claimed_at) ORDER BY event_text"
            )
            if "source_id" not in self._read_columns(client, EVENT_TABLES_TABLE):
                # Made by an earlier release: its claims count for no source ('').
                client.command(
                    f"ALTER TABLE {self._qualified(EVENT_TABLES_TABLE)} "
                    "ADD COLUMN IF NOT EXISTS source_id String"
                )
        except Exception:
            client.close()
            raise
        self._writer = client
        log.info("warehouse %s open for writing (database %s)", self.target.display, self.database)
        return client

    def _migrate_discards(self, client: Client) -> None:
        """Give a `discards` table of the release before the columns that keep every value.

        Its rows stay; they read ``key_path`` as ``[]`` and ``message_id`` as ``''``. Columns
        added in the same ALTER may extend the sort key, so this is a metadata change.
        """
        columns = self._read_columns(client, DISCARDS_TABLE)
        if "key_path" in columns and "message_id" in columns:
            return
        client.command(
            f"ALTER TABLE {self._qualified(DISCARDS_TABLE)} "
            "ADD COLUMN IF NOT EXISTS key_path Array(String) AFTER column_name, "
            "ADD COLUMN IF NOT EXISTS message_id String AFTER row_id, "
            f"MODIFY ORDER BY ({', '.join(quote(name) for name in DISCARDS_ORDER_BY)})"
        )
        log.info("warehouse: discards table extended to keep every value set aside")

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open_reader(self) -> _ReaderSession:
        """A new read-only session, limits set, on the reader target."""
        target = self.reader_target
        if target.kind == "chdb" and target.path is not None and not target.path.exists():
            raise WarehouseUnavailable(
                f"no warehouse at {target.path} yet: start `signalsmith serve` and send an event "
                "(or set SIGNALSMITH_WAREHOUSE_DSN / SIGNALSMITH_DATA_DIR to where it is)"
            )
        no_database = WarehouseUnavailable(
            f"the warehouse {target.display} has no database {self.database!r} yet: no "
            "event has been written to it; send one and try again"
        )
        config = self.config
        if target.kind == "chdb":
            client = self._connect(database=None, target=target)
        else:
            # Straight into the warehouse's database: a reader user may see nothing else.
            try:
                client = self._connect(
                    database=self.database,
                    target=target,
                    receive_timeout=max(300.0, config.query_timeout_seconds + 30),
                )
            except WarehouseUnavailable as error:
                if "UNKNOWN_DATABASE" in str(error):
                    raise no_database from error
                raise
        # Its queries carry this mark (their log_comment): KILL QUERY finds them by it.
        mark = f"signalsmith-sql {uuid.uuid4().hex}"
        settings: dict[str, Any] = {
            # FINAL on every table: a row written twice (a redelivered batch) shows once.
            "final": 1,
            "max_result_rows": self.query_row_limit + 1,
            "result_overflow_mode": "break",
            "max_execution_time": config.query_timeout_seconds,
            "max_memory_usage": config.query_max_memory_bytes,
            "log_comment": mark,
        }
        try:
            if target.kind == "chdb":
                databases = client.query(
                    f"SELECT count() FROM system.databases WHERE name = {literal(self.database)}"
                ).result_rows
                if not databases or not databases[0][0]:
                    raise no_database
                client.database = self.database
                # Session-wide and set last: from here on this session cannot write or change
                # a setting (a query's SETTINGS clause included).
                for name, value in settings.items():
                    client.command(f"SET {name} = {literal(str(value))}")
                client.command("SET readonly = 1")
                settings = {}
            else:
                # A server takes settings per request: readonly=2 refuses writes and a change
                # of readonly itself, and allows these alongside. A query that outlives its
                # HTTP request is stopped.
                settings = {
                    "readonly": 2,
                    **settings,
                    "cancel_http_readonly_queries_on_client_close": 1,
                }
        except Exception:
            client.close()
            raise
        return _ReaderSession(client, mark, settings)

    def _take_reader(self) -> _ReaderSession:
        with self._readers_lock:
            if self._readers_closed:
                raise WarehouseUnavailable(f"the warehouse {self.target.display} is closed")
            if self._idle_readers:
                return self._idle_readers.pop()
        return self._open_reader()

    def _give_back(self, session: _ReaderSession, *, reusable: bool) -> None:
        with self._readers_lock:
            if reusable and not self._readers_closed:
                self._idle_readers.append(session)
                return
        session.client.close()

    def _close_readers(self, running: list[_RunningQuery]) -> None:
        with self._readers_lock:
            self._readers_closed = True
            idle, self._idle_readers = self._idle_readers, []
        for query in running:
            self._cancel(query)
        for session in idle:
            session.client.close()
        if self._killer is not None:
            self._killer.client.close()
            self._killer = None

    def _qualified(self, table: str) -> str:
        return f"{quote(self.database)}.{quote(table)}"

    # --- reading ------------------------------------------------------------------------------

    def query_sync(self, sql: str, *, limit: int | None = None) -> QueryResult:
        """``query`` for callers without an event loop (`signalsmith sql` on its own)."""
        return self._query(sql, limit, None)

    def _query(self, sql: str, limit: int | None, running: _RunningQuery | None) -> QueryResult:
        limit = min(limit or self.query_row_limit, self.query_row_limit)
        session = self._take_reader()
        reusable = False
        try:
            if running is not None:
                with running.lock:
                    running.session = session
            statement = checked_statement(sql, self.database, session.ask)
            if running is not None and running.cancelled:
                raise QueryError(CANCELLED)
            result = session.client.query(statement, settings=session.settings or None)
            rows = result.result_rows
            reusable = True
        except NotReadOnly:
            reusable = True
            raise
        except QueryError:
            raise
        except Exception as error:
            # A failed statement can leave output behind on a chDB session; the next query
            # gets a fresh one.
            raise QueryError(self._failure(error)) from error
        finally:
            if running is not None:
                with running.lock:
                    running.session = None
            self._give_back(session, reusable=reusable)
        return QueryResult(
            columns=list(result.column_names),
            types=[column_type.name for column_type in result.column_types],
            rows=[[plain(value) for value in row] for row in rows[:limit]],
            truncated=len(rows) > limit,
        )

    def _failure(self, error: BaseException) -> str:
        """What went wrong with a query, in the words of its fix."""
        message = _clickhouse_message(error)
        config = self.config
        if "TIMEOUT_EXCEEDED" in message:
            return (
                f"the query ran longer than {config.query_timeout_seconds:g} s and the engine "
                "stopped it: narrow it (a WHERE on received_at, a LIMIT) or raise "
                f"SIGNALSMITH_WAREHOUSE_QUERY_TIMEOUT_SECONDS ({message})"
            )
        if "MEMORY_LIMIT_EXCEEDED" in message:
            return (
                f"the query needed more than {config.query_max_memory_bytes} bytes of memory and "
                "the engine stopped it: narrow it or raise "
                f"SIGNALSMITH_WAREHOUSE_QUERY_MAX_MEMORY_BYTES ({message})"
            )
        if "QUERY_WAS_CANCELLED" in message:
            return CANCELLED
        if "UNKNOWN_TABLE" in message:
            message += (
                "; a table is created by the first event that lands in it, so it may not "
                "exist yet: `signalsmith sql 'SHOW TABLES'` lists the tables there are"
            )
        return message

    def _cancel(self, running: _RunningQuery) -> None:
        """Stop ``running`` in the engine: KILL QUERY by its session's mark, from a session of
        its own, until its thread lets go of the session (a kill that lands between the check
        and the query finds nothing to stop, so it is sent again)."""
        with running.lock:
            running.cancelled = True
        deadline = time.monotonic() + self.config.query_timeout_seconds + 10
        while time.monotonic() < deadline:
            with running.lock:
                session = running.session
                if session is None:
                    return
                try:
                    if self._killer is None:
                        self._killer = self._open_reader()
                    self._killer.client.command(
                        f"KILL QUERY WHERE Settings['log_comment'] = {literal(session.mark)} ASYNC",
                        settings=self._killer.settings or None,
                    )
                except Exception as error:
                    log.warning("warehouse: could not stop a query: %s", error)
                    if self._killer is not None:
                        self._killer.client.close()
                        self._killer = None
            time.sleep(0.1)

    # --- writing ------------------------------------------------------------------------------

    def write_sync(self, events: list[Event]) -> WriteReport:
        client = self._open_writer()
        try:
            with _cyclic_gc_paused():
                return self._write(client, events)
        except Exception:
            # Another process may have changed a table under us: read schemas afresh next time.
            self._tables.clear()
            self._table_kinds.clear()
            raise

    def write_violations_sync(self, records: list[ViolationRecord]) -> int:
        client = self._open_writer()
        if VIOLATIONS_TABLE not in self._tables:
            self._create_table(client, VIOLATIONS_TABLE, VIOLATION_COLUMNS, {})
            self._tables[VIOLATIONS_TABLE] = dict(VIOLATION_COLUMNS)
        loaded_at = datetime.now(UTC)
        data = [
            [
                f"{record.message_id}:{record.source_id}:{index}",
                record.source_id,
                record.event_type,
                record.event_name,
                record.message_id,
                record.handling,
                record.plan,
                record.event_version,
                violation.type,
                violation.rule,
                violation.field,
                violation.expected,
                violation.actual,
                violation.description,
                record.event.decode("utf-8", "replace"),
                record.received_at,
                loaded_at,
            ]
            for record in records
            for index, violation in enumerate(record.violations)
        ]
        if data:
            token = _token(VIOLATIONS_TABLE, (row[0] for row in data))
            self._insert_rows(client, VIOLATIONS_TABLE, list(VIOLATION_COLUMNS), data, token)
        return len(data)

    def _write(self, client: Client, events: list[Event]) -> WriteReport:
        loaded_at = datetime.now(UTC)
        tables, untabled = self._resolve_event_tables(client, events)
        by_table: dict[str, list[Row]] = {}
        discards: list[Discard] = []
        for event in events:
            rows, set_aside = event_rows(event, loaded_at, tables.get, self._flattener)
            discards += set_aside
            if untabled and isinstance(event, Track) and event.event not in tables:
                discards.append(untabled_properties(event, untabled[event.project_id]))
            for row in rows:
                by_table.setdefault(row.table, []).append(row)
        prepared = {
            table: self._prepare(client, table, rows, discards) for table, rows in by_table.items()
        }
        for table in PROFILE_TABLES:
            if table in prepared:
                prepared[table] = self._merge_profiles(client, table, prepared[table], loaded_at)
        written: dict[str, int] = {}
        for table, rows_and_values in prepared.items():
            self._insert(client, table, rows_and_values)
            written[table] = len(rows_and_values)
        if discards:
            self._insert_discards(client, discards, loaded_at)
        return WriteReport(rows=written, discards=len(discards))

    # -- event tables --

    def _resolve_event_tables(
        self, client: Client, events: list[Event]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The table of each track event name of ``events`` that has one, claiming tables for
        new names within the caps; and, by source, why its calls of the names left without a
        table have none (`EVENT_TABLE_LIMIT` or `NEW_TABLE_LIMIT`)."""
        names = dict.fromkeys(event.event for event in events if isinstance(event, Track))
        missing = [name for name in names if name not in self._event_tables]
        if not missing:
            return self._event_tables, {}
        for chunk in _chunks(missing, LOOKUP_CHUNK):
            found = client.query(
                f"SELECT event_text, table_name FROM {self._qualified(EVENT_TABLES_TABLE)} FINAL "
                f"WHERE event_text IN ({_literals(chunk)})"
            ).result_rows
            self._event_tables.update({text: table for text, table in found})
        new = {name for name in missing if name not in self._event_tables}
        if not new:
            return self._event_tables, {}
        # The new names of each source, in the order its calls brought them.
        wanted: dict[str, dict[str, None]] = {}
        for event in events:
            if isinstance(event, Track) and event.event in new:
                wanted.setdefault(event.project_id, {})[event.event] = None
        chosen, untabled = self._allot_new_tables(client, wanted)
        if chosen:
            self._claim_event_tables(client, chosen)
        for source, reason in untabled.items():
            left = sum(name not in self._event_tables for name in wanted[source])
            self._warn_untabled(source, reason, left)
        return self._event_tables, untabled

    def _allot_new_tables(
        self, client: Client, wanted: dict[str, dict[str, None]]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Which new names get a table in this batch (name -> the source it counts for), and
        why the sources of the others get none.

        A source gets tables up to its cap; the batch makes at most its own cap of them. Sources
        take turns, one name each, so one source's flood does not take another's turn: a source
        with one new name gets its table whatever else the batch holds.
        """
        cap = self.config.max_event_tables_per_source
        claimed = self._event_tables_claimed_by(client, list(wanted))
        room = {source: max(0, cap - claimed.get(source, 0)) for source in wanted}
        budget = self.config.max_new_event_tables_per_batch
        chosen: dict[str, str] = {}
        turns = {source: iter(names) for source, names in wanted.items() if room[source]}
        while budget and turns:
            for source, names in list(turns.items()):
                name = next((name for name in names if name not in chosen), None)
                if name is not None:
                    chosen[name] = source
                    room[source] -= 1
                    budget -= 1
                if name is None or not room[source]:
                    del turns[source]
                if not budget:
                    break
        untabled = {
            source: EVENT_TABLE_LIMIT if not room[source] else NEW_TABLE_LIMIT
            for source, names in wanted.items()
            if any(name not in chosen for name in names)
        }
        return chosen, untabled

    def _event_tables_claimed_by(self, client: Client, sources: list[str]) -> dict[str, int]:
        # Counted afresh whenever a batch brings new names: other writers claim tables too.
        counts: dict[str, int] = {}
        for chunk in _chunks(sources, LOOKUP_CHUNK):
            found = client.query(
                f"SELECT source_id, count() FROM {self._qualified(EVENT_TABLES_TABLE)} FINAL "
                f"WHERE source_id IN ({_literals(chunk)}) GROUP BY source_id"
            ).result_rows
            counts.update({source: int(count) for source, count in found})
        return counts

    def _claim_event_tables(self, client: Client, chosen: dict[str, str]) -> None:
        """Claim a table for each new name of ``chosen`` (name -> the source it counts for)."""
        missing = list(chosen)
        candidates = {name: event_table_candidates(name) for name in missing}
        holders = self._table_holders(
            client, {table for tables in candidates.values() for table in tables}
        )
        # Claim, then check: another writer (several workers on one ClickHouse server) may have
        # claimed the same table at the same moment. The earliest claim keeps it; a name that
        # lost takes its next candidate, which only it can want (it holds a hash of the name).
        for _ in range(3):
            if not missing:
                break
            claims: dict[str, str] = {}
            for name in missing:
                for table in candidates[name]:
                    if holders.get(table, name) == name:
                        claims[name] = table
                        holders[table] = name
                        break
                else:  # pragma: no cover - the last candidate is a 160-bit hash of the name
                    raise RuntimeError(f"no free table name for event {name!r}")
            now = datetime.now(UTC)
            self._insert_rows(
                client,
                EVENT_TABLES_TABLE,
                ["event_text", "table_name", "claimed_at", "source_id"],
                [[name, table, now, chosen[name]] for name, table in claims.items()],
            )
            confirmed = self._table_holders(client, set(claims.values()))
            holders.update(confirmed)
            for name, table in claims.items():
                if confirmed.get(table) == name:
                    self._event_tables[name] = table
            missing = [name for name in missing if name not in self._event_tables]
        if missing:
            raise RuntimeError(f"could not claim tables for events {missing!r}; retrying")

    def _warn_untabled(self, source: str, reason: str, names: int) -> None:
        now = time.monotonic()
        warned_at = self._untabled_warned_at.get((source, reason))
        if warned_at is not None and now - warned_at < UNTABLED_WARNING_SECONDS:
            return
        self._untabled_warned_at[(source, reason)] = now
        if reason == EVENT_TABLE_LIMIT:
            why = (
                f"source {source!r} has its {self.config.max_event_tables_per_source} event "
                "tables (SIGNALSMITH_WAREHOUSE_MAX_EVENT_TABLES_PER_SOURCE)"
            )
        else:
            why = (
                f"this batch made its {self.config.max_new_event_tables_per_batch} new event "
                "tables (SIGNALSMITH_WAREHOUSE_MAX_NEW_EVENT_TABLES_PER_BATCH); "
                f"source {source!r} gets more in later batches"
            )
        log.warning(
            "warehouse: %s: %d new event names got no table; their calls are in tracks "
            "(event ''), their properties in discards (reason %s)",
            why,
            names,
            reason,
        )

    def _table_holders(self, client: Client, tables: set[str]) -> dict[str, str]:
        holders: dict[str, str] = {}
        for chunk in _chunks(sorted(tables), LOOKUP_CHUNK):
            found = client.query(
                "SELECT table_name, argMin(event_text, (claimed_at, event_text)) "
                f"FROM {self._qualified(EVENT_TABLES_TABLE)} FINAL "
                f"WHERE table_name IN ({_literals(chunk)}) GROUP BY table_name"
            ).result_rows
            holders.update({table: text for table, text in found})
        return holders

    # -- schema --

    def _read_columns(self, client: Client, table: str) -> dict[str, str]:
        self._tables_read_at[table] = time.monotonic()
        found = client.query(
            "SELECT name, type FROM system.columns "
            f"WHERE database = {literal(self.database)} AND table = {literal(table)} "
            "ORDER BY position"
        ).result_rows
        return {name: column_type for name, column_type in found}

    def _kinds(self, table: str, columns: dict[str, str]) -> ColumnKinds:
        """The kind of each column of ``table`` (cached while its columns stay the same)."""
        cached = self._table_kinds.get(table)
        if cached is None or cached[0] is not columns:
            cached = (columns, ColumnKinds(columns))
            self._table_kinds[table] = cached
        return cached[1]

    def _columns(self, client: Client, table: str) -> dict[str, str]:
        known = self._tables.get(table)
        read_at = self._tables_read_at.get(table, 0.0)
        if known is None or time.monotonic() - read_at > self.schema_ttl_seconds:
            known = self._read_columns(client, table)
            if known:
                self._tables[table] = known
        return known

    def _create_table(
        self,
        client: Client,
        table: str,
        fixed: dict[str, str],
        added: dict[str, str],
        version: str = "loaded_at",
        order_by: tuple[str, ...] = ("id",),
    ) -> None:
        columns = ", ".join(f"{quote(name)} {kind}" for name, kind in {**fixed, **added}.items())
        # ReplacingMergeTree on the row id: a row loaded twice is one row for FINAL queries
        # (and after background merges). No time partitions: ClickHouse merges duplicates only
        # within a partition, and Segment's promise is dedupe by id however far apart.
        client.command(
            f"CREATE TABLE IF NOT EXISTS {self._qualified(table)} ({columns}) "
            f"ENGINE = ReplacingMergeTree({quote(version)}) "
            f"ORDER BY ({', '.join(quote(name) for name in order_by)}) "
            f"SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}"
        )

    def _prepare(
        self, client: Client, table: str, rows: list[Row], discards: list[Discard]
    ) -> list[tuple[Row, dict[str, Any]]]:
        """Evolve ``table`` for ``rows``, then each row's dynamic values cast to their columns."""
        fixed = fixed_columns(table)
        current = self._columns(client, table)
        # Most batches bring nothing new: this one pass casts every value to its column.
        first_pass = _cast_to_columns(rows, table, self._kinds(table, current))
        if current and fixed.keys() <= current.keys():
            if not first_pass.arriving and not first_pass.widen:
                discards += first_pass.discards
                return first_pass.prepared
        # New columns in the order they first appear, with the kinds this batch brings them.
        arriving = {
            name: [infer(raw)[0] for _, raw in values]
            for name, values in first_pass.arriving.items()
        }
        widen = list(first_pass.widen)
        room = max(0, self.config.max_columns - len(current or fixed))
        accepted = list(arriving)[:room]
        added = {name: CLICKHOUSE_TYPES[merged_kind(arriving[name])] for name in accepted}
        if not current:
            self._create_table(client, table, fixed, added)
            self._tables[table] = self._read_columns(client, table)
        else:
            # Fixed columns a table made by an older release lacks come along.
            missing_fixed = {name: kind for name, kind in fixed.items() if name not in current}
            changes = [
                f"ADD COLUMN IF NOT EXISTS {quote(name)} {kind}"
                for name, kind in {**missing_fixed, **added}.items()
            ]
            changes += [
                f"MODIFY COLUMN {quote(name)} {CLICKHOUSE_TYPES[Kind.FLOAT]}" for name in widen
            ]
            if changes:
                # ALTER ... ADD COLUMN changes metadata only: inserts go on while it runs, and
                # old rows read the new column as NULL.
                client.command(f"ALTER TABLE {self._qualified(table)} {', '.join(changes)}")
                # Re-read rather than assume: another writer may have added a column first.
                self._tables[table] = self._read_columns(client, table)
                if widen:
                    log.info("warehouse: widened %s.%s to Float64", table, ", ".join(widen))
        columns = self._tables[table]
        # A second pass against the evolved table: what still has no column is over the cap.
        cast_rows = _cast_to_columns(rows, table, self._kinds(table, columns))
        for name in cast_rows.arriving:
            for row, raw in cast_rows.arriving[name]:
                cast_rows.discards.append(
                    Discard(
                        table_name=table,
                        column_name=name,
                        key_path=row.key_path(name),
                        row_id=row.row_id,
                        message_id=row.message_id,
                        value=text_of(raw),
                        value_type=sent_as(raw),
                        column_type="",
                        reason="column_limit",
                        received_at=row.received_at,
                    )
                )
        discards += cast_rows.discards
        return cast_rows.prepared

    # -- users and accounts --

    def _merge_profiles(
        self,
        client: Client,
        table: str,
        prepared: list[tuple[Row, dict[str, Any]]],
        loaded_at: datetime,
    ) -> list[tuple[Row, dict[str, Any]]]:
        """One row per user (or group): its stored traits, updated by this batch's calls.

        Calls apply in ``received_at`` order; a trait a call leaves out keeps its value. A call
        older than the stored row only fills traits the row does not have yet.
        """
        by_id: dict[str, list[tuple[Row, dict[str, Any]]]] = {}
        for row, values in prepared:
            by_id.setdefault(row.row_id, []).append((row, values))
        stored = self._stored_profiles(client, table, list(by_id))
        fixed_names = set(fixed_columns(table))
        merged: list[tuple[Row, dict[str, Any]]] = []
        for row_id, updates in by_id.items():
            before = stored.get(row_id)
            fixed: dict[str, Any] | None = None
            values: dict[str, Any] = {}
            newest: datetime | None = None
            if before is not None:
                fixed = {name: before[name] for name in fixed_names if name in before}
                values = {
                    name: value
                    for name, value in before.items()
                    if name not in fixed_names and value is not None
                }
                newest = before.get("received_at")
            for row, update in sorted(updates, key=lambda pair: pair[0].received_at):
                if newest is None or row.received_at >= newest:
                    values.update(update)
                    fixed, newest = dict(row.fixed), row.received_at
                else:
                    for name, value in update.items():
                        values.setdefault(name, value)
            assert fixed is not None
            fixed["loaded_at"] = loaded_at
            last = updates[-1][0]
            # The token covers every call folded in: the same batch again is skipped whole.
            message_ids = ",".join(update_row.message_id for update_row, _ in updates)
            profile = Row(table, row_id, message_ids, last.received_at, fixed)
            merged.append((profile, values))
        return merged

    def _stored_profiles(
        self, client: Client, table: str, ids: list[str]
    ) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids, LOOKUP_CHUNK):
            result = client.query(
                f"SELECT * FROM {self._qualified(table)} FINAL WHERE id IN ({_literals(chunk)})"
            )
            names = result.column_names
            for row in result.result_rows:
                # A FixedString comes back as bytes, which JSON would carry as base64: as text
                # it is written back as it was.
                record = {
                    name: value.decode("utf-8", "replace") if type(value) is bytes else value
                    for name, value in zip(names, row, strict=True)
                }
                found[record["id"]] = record
        return found

    # -- inserts --

    def _insert(self, client: Client, table: str, rows: list[tuple[Row, dict[str, Any]]]) -> None:
        columns = self._tables[table]
        fixed = [name for name in fixed_columns(table) if name in columns]
        dynamic = sorted({name for _, values in rows for name in values})
        data = [[*map(row.fixed.get, fixed), *map(values.get, dynamic)] for row, values in rows]
        # The same rows again (a retried batch) within the window make no new part.
        token = _token(table, (row.message_id for row, _ in rows))
        self._insert_rows(client, table, fixed + dynamic, data, token)

    def _insert_discards(
        self, client: Client, discards: list[Discard], discarded_at: datetime
    ) -> None:
        data = [
            [
                d.table_name,
                d.column_name,
                d.key_path,
                d.row_id,
                d.message_id,
                d.value,
                d.value_type,
                d.column_type,
                d.reason,
                d.received_at,
                discarded_at,
            ]
            for d in discards
        ]
        token = _token(
            DISCARDS_TABLE,
            (
                f"{d.table_name}\x00{d.column_name}\x00{d.key_path}\x00{d.row_id}\x00"
                f"{d.message_id}\x00{d.received_at}\x00{d.value}"
                for d in discards
            ),
        )
        self._insert_rows(client, DISCARDS_TABLE, list(DISCARD_COLUMNS), data, token)

    def _insert_rows(
        self,
        client: Client,
        table: str,
        names: list[str],
        data: list[list[Any]],
        token: str | None = None,
    ) -> None:
        """One insert of ``data`` (rows of values in ``names`` order) as JSON lines.

        ClickHouse parses the lines itself: building its Native format in Python
        (clickhouse-connect's ``insert``) cost twice as much per row
        (bench/warehouse_insert.py). Every value already has its column's Python type (see
        ``_cast_to_columns``), so each line is exactly what the column takes.
        """
        client.raw_insert(
            self._qualified(table),
            names,
            _json_lines.encode_lines(data),
            fmt="JSONCompactEachRow",
            settings=(
                {**JSON_INSERT_SETTINGS, "insert_deduplication_token": token}
                if token
                else JSON_INSERT_SETTINGS
            ),
        )


class ColumnKinds:
    """A table's columns as ``_cast_to_columns`` needs them: each one's type and kind, and the
    Python type a value must already have to go in as it is (absent where only ``cast`` can
    tell, as for timestamps)."""

    __slots__ = ("as_it_is", "dates", "kinds", "types")

    def __init__(self, columns: dict[str, str]) -> None:
        self.types = columns
        self.kinds = {name: kind_of_type(column_type) for name, column_type in columns.items()}
        # Timestamp columns changed by hand to a date: they take the date (in UTC), which the
        # engine would not cut from a date-time itself.
        self.dates = frozenset(
            name for name, column_type in columns.items() if is_date_type(column_type)
        )
        # Keyed by column name, not by kind: hashing an Enum member runs Python code, which
        # showed up at a fifth of the write path.
        self.as_it_is = {
            name: AS_IT_IS[kind] for name, kind in self.kinds.items() if kind in AS_IT_IS
        }


class _CastRows:
    """One pass of a table's rows against its columns (see ``_cast_to_columns``)."""

    __slots__ = ("arriving", "discards", "prepared", "widen")

    def __init__(self) -> None:
        self.prepared: list[tuple[Row, dict[str, Any]]] = []
        self.discards: list[Discard] = []
        # Values with no column yet, by column name: (their row, the value).
        self.arriving: dict[str, list[tuple[Row, Any]]] = {}
        # Integer columns that met a float, in the order they did.
        self.widen: dict[str, None] = {}


def _cast_to_columns(rows: list[Row], table: str, columns: ColumnKinds) -> _CastRows:
    """Each row's values as their columns take them, what does not fit set aside, and what
    would need the table to change first (a new column, an integer column to widen)."""
    result = _CastRows()
    prepared, arriving = result.prepared, result.arriving
    as_it_is, kinds = columns.as_it_is, columns.kinds
    for row in rows:
        values: dict[str, Any] = {}
        for name, raw in row.values.items():
            # The common case, kept short: a value of its column's own type goes in as it is
            # (an int only within Int64).
            expected = as_it_is.get(name)
            if type(raw) is expected and (expected is not int or INT64_MIN <= raw <= INT64_MAX):
                values[name] = raw
                continue
            kind = kinds.get(name)
            if kind is None:
                arriving.setdefault(name, []).append((row, raw))
                continue
            try:
                value = cast(raw, kind)
                values[name] = value.date() if name in columns.dates else value
                continue
            except Conflict:
                if kind is Kind.INTEGER and infer(raw)[0] is Kind.FLOAT:
                    result.widen[name] = None
            result.discards.append(
                Discard(
                    table_name=table,
                    column_name=name,
                    key_path=row.key_path(name),
                    row_id=row.row_id,
                    message_id=row.message_id,
                    value=text_of(raw),
                    value_type=sent_as(raw),
                    column_type=columns.types[name],
                    reason="type_conflict",
                    received_at=row.received_at,
                )
            )
        prepared.append((row, values))
    return result


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Hold Python's cycle collector while a batch is built and written.

    A batch makes a few million small objects that all live until its inserts are done; the
    collector would scan them again and again as they pile up, which made writing a batch two
    to three times slower (bench/warehouse_insert.py). Nothing built here forms a reference
    cycle, so reference counting frees it all as usual; collection resumes right after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _locked_by_another_process(path: Path | None) -> bool:
    """Whether another process holds the chDB directory (ClickHouse flocks ``<dir>/status``).

    chDB reports a held directory only as a generic start-up failure, so the lock is asked
    directly, after that failure.
    """
    status = path / "status" if path is not None else None
    if status is None or not status.exists():
        return False
    import fcntl

    with open(status, "rb") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
    return False


def _clickhouse_message(error: BaseException) -> str:
    """ClickHouse's own reason, without the client's wrapping and the version trailer."""
    text = str(error).strip()
    for marker in ("DB::Exception: ",):
        while marker in text:
            text = text.split(marker, 1)[1]
    text = text.split(" (version ")[0]
    # The check's own queries (see readonly.py) quote the query back; its position is enough.
    return text.split(": In scope SELECT ")[0].strip() or type(error).__name__
