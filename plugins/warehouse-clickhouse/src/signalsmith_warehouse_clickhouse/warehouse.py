"""The ClickHouse warehouse: writes batches of events into Segment's tables, evolving them.

One class serves both targets through clickhouse-connect: ``chdb://`` runs the ClickHouse engine
in this process (chDB), ``http(s)://`` talks to a server. Its clients are blocking, so every
call runs on a thread of this warehouse's own, never on the event loop: one thread writes
(chDB sessions are not thread-safe, and the schema cache is then touched by one thread only),
another answers read-only queries, each with its own session.

A batch is written in four steps: name the tables of new event names; turn events into rows;
bring each table's schema up to what its rows need (create it, add columns, widen integer
columns that meet floats) and cast every value to its column, setting aside what does not fit;
then one insert per table, plus one into ``discards``, each as JSON lines ClickHouse parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import time
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
from signalsmith_warehouse_clickhouse.readonly import read_only_query
from signalsmith_warehouse_clickhouse.rows import (
    LOADED_AT,
    PROFILE_TABLES,
    TIMESTAMP,
    Discard,
    Row,
    event_rows,
    fixed_columns,
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
    "row_id": "String",
    "value": "String",
    "value_type": "String",
    "column_type": "String",
    "reason": "String",
    "received_at": TIMESTAMP,
    "discarded_at": LOADED_AT,
}
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
# Values per IN (...) list when looking rows up by id.
LOOKUP_CHUNK = 1000
# Most rows a read-only query returns.
QUERY_ROW_LIMIT = 10_000
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
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="signalsmith-ch-write")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="signalsmith-ch-read")
        self._writer: Client | None = None
        self._reader: Client | None = None
        self._reader_settings: dict[str, Any] = {}
        # Columns (name -> ClickHouse type) of each table this process has seen; a table is
        # read from system.columns the first time, then kept up to date by our own DDL.
        self._tables: dict[str, dict[str, str]] = {}
        self._tables_read_at: dict[str, float] = {}
        self.schema_ttl_seconds = SCHEMA_TTL_SECONDS
        # The kinds of those columns, with the column dict they were worked out from.
        self._table_kinds: dict[str, tuple[dict[str, str], ColumnKinds]] = {}
        # Event name -> its table, as recorded in `_event_tables`.
        self._event_tables: dict[str, str] = {}

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
        """Run one read-only statement, duplicates merged away (``FINAL`` on every table)."""
        return await self._on(self._read_thread, partial(self.query_sync, sql, limit=limit))

    async def close(self) -> None:
        await self._on(self._write_thread, self._close_writer)
        await self._on(self._read_thread, self._close_reader)
        self._write_thread.shutdown(wait=False)
        self._read_thread.shutdown(wait=False)

    def close_sync(self) -> None:
        """``close`` for callers without an event loop that used the ``*_sync`` methods."""
        self._close_writer()
        self._close_reader()
        self._write_thread.shutdown(wait=False)
        self._read_thread.shutdown(wait=False)

    # --- connections --------------------------------------------------------------------------

    def _connect(self, *, database: str | None) -> Client:
        import clickhouse_connect

        target = self.target
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
                send_receive_timeout=300,
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
            self._create_table(client, DISCARDS_TABLE, DISCARD_COLUMNS, {}, "discarded_at", (
                "table_name", "column_name", "row_id", "received_at"
            ))  # fmt: skip
            # Which table each event name got: names that snake-case alike get different
            # tables, and the choice must outlive this process.
            client.command(
                f"CREATE TABLE IF NOT EXISTS {self._qualified(EVENT_TABLES_TABLE)} "
                "(event_text String, table_name String, claimed_at DateTime64(6, 'UTC')) "
                "ENGINE = ReplacingMergeTree(claimed_at) ORDER BY event_text"
            )
        except Exception:
            client.close()
            raise
        self._writer = client
        log.info("warehouse %s open for writing (database %s)", self.target.display, self.database)
        return client

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open_reader(self) -> Client:
        if self._reader is not None:
            return self._reader
        target = self.target
        if target.kind == "chdb" and target.path is not None and not target.path.exists():
            raise WarehouseUnavailable(
                f"no warehouse at {target.path} yet: start `signalsmith serve` and send an event "
                "(or set SIGNALSMITH_WAREHOUSE_DSN / SIGNALSMITH_DATA_DIR to where it is)"
            )
        client = self._connect(database=None)
        try:
            databases = client.query(
                f"SELECT count() FROM system.databases WHERE name = {literal(self.database)}"
            ).result_rows
            if not databases or not databases[0][0]:
                raise WarehouseUnavailable(
                    f"the warehouse {target.display} has no database {self.database!r} yet: no "
                    "event has been written to it; send one and try again"
                )
            client.database = self.database
            limits = {
                # FINAL on every table: a row written twice (a redelivered batch) shows once.
                "final": 1,
                "max_result_rows": self.query_row_limit + 1,
                "result_overflow_mode": "break",
            }
            if target.kind == "chdb":
                # Session-wide and set last: from here on this session cannot write, change a
                # setting, or use table functions (file(), url()) that reach outside.
                for name, value in limits.items():
                    client.command(f"SET {name} = {literal(str(value))}")
                client.command("SET readonly = 1")
                self._reader_settings = {}
            else:
                # A server takes settings per request; readonly=2 allows these ones alongside.
                self._reader_settings = {"readonly": 2, **limits}
        except Exception:
            client.close()
            raise
        self._reader = client
        return client

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _qualified(self, table: str) -> str:
        return f"{quote(self.database)}.{quote(table)}"

    # --- reading ------------------------------------------------------------------------------

    def query_sync(self, sql: str, *, limit: int | None = None) -> QueryResult:
        statement = read_only_query(sql)
        limit = min(limit or self.query_row_limit, self.query_row_limit)
        reader = self._open_reader()
        try:
            result = reader.query(statement, settings=self._reader_settings or None)
            rows = result.result_rows
        except Exception as error:
            # A failed statement can leave output behind on a chDB session; start a fresh one.
            self._close_reader()
            message = _clickhouse_message(error)
            if "UNKNOWN_TABLE" in message:
                message += (
                    "; a table is created by the first event that lands in it, so it may not "
                    "exist yet: `signalsmith sql 'SHOW TABLES'` lists the tables there are"
                )
            raise QueryError(message) from error
        return QueryResult(
            columns=list(result.column_names),
            types=[column_type.name for column_type in result.column_types],
            rows=[[plain(value) for value in row] for row in rows[:limit]],
            truncated=len(rows) > limit,
        )

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
        names = list(dict.fromkeys(event.event for event in events if isinstance(event, Track)))
        tables = self._resolve_event_tables(client, names)
        by_table: dict[str, list[Row]] = {}
        discards: list[Discard] = []
        for event in events:
            rows, set_aside = event_rows(event, loaded_at, tables.__getitem__)
            discards += set_aside
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

    def _resolve_event_tables(self, client: Client, names: list[str]) -> dict[str, str]:
        """The table of every event name in ``names``, claiming tables for new names."""
        missing = [name for name in names if name not in self._event_tables]
        if not missing:
            return self._event_tables
        for chunk in _chunks(missing, LOOKUP_CHUNK):
            found = client.query(
                f"SELECT event_text, table_name FROM {self._qualified(EVENT_TABLES_TABLE)} FINAL "
                f"WHERE event_text IN ({_literals(chunk)})"
            ).result_rows
            self._event_tables.update({text: table for text, table in found})
        missing = [name for name in missing if name not in self._event_tables]
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
            chosen: dict[str, str] = {}
            for name in missing:
                for table in candidates[name]:
                    if holders.get(table, name) == name:
                        chosen[name] = table
                        holders[table] = name
                        break
                else:  # pragma: no cover - the last candidate is a 160-bit hash of the name
                    raise RuntimeError(f"no free table name for event {name!r}")
            now = datetime.now(UTC)
            self._insert_rows(
                client,
                EVENT_TABLES_TABLE,
                ["event_text", "table_name", "claimed_at"],
                [[name, table, now] for name, table in chosen.items()],
            )
            confirmed = self._table_holders(client, set(chosen.values()))
            holders.update(confirmed)
            for name, table in chosen.items():
                if confirmed.get(table) == name:
                    self._event_tables[name] = table
            missing = [name for name in missing if name not in self._event_tables]
        if missing:
            raise RuntimeError(f"could not claim tables for events {missing!r}; retrying")
        return self._event_tables

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
            name: [infer(raw)[0] for _, _, raw in values]
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
            for row_id, received_at, raw in cast_rows.arriving[name]:
                cast_rows.discards.append(
                    Discard(
                        table_name=table,
                        column_name=name,
                        row_id=row_id,
                        value=text_of(raw),
                        value_type=sent_as(raw),
                        column_type="",
                        reason="column_limit",
                        received_at=received_at,
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
                d.row_id,
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
                f"{d.table_name}\x00{d.column_name}\x00{d.row_id}\x00{d.received_at}\x00{d.value}"
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
        # Values with no column yet, by column name: (row id, received_at, value).
        self.arriving: dict[str, list[tuple[str, datetime, Any]]] = {}
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
                arriving.setdefault(name, []).append((row.row_id, row.received_at, raw))
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
                    row_id=row.row_id,
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
    return text.split(" (version ")[0].strip() or type(error).__name__
