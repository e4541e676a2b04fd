"""What `signalsmith sql` agrees to run, and what the engine refuses even when asked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from signalsmith_warehouse_clickhouse import ClickHouseWarehouse, NotReadOnly, read_only_query
from signalsmith_warehouse_clickhouse.warehouse import QueryError


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        ("  select count() from tracks ;; ", "select count() from tracks"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x"),
        ("(SELECT 1)", "(SELECT 1)"),
        ("SHOW TABLES", "SHOW TABLES"),
        ("DESCRIBE tracks", "DESCRIBE tracks"),
        ("EXPLAIN SELECT 1", "EXPLAIN SELECT 1"),
        ("SELECT ';' AS semi -- a comment; with a semicolon", "SELECT ';' AS semi"),
        ("SELECT `a;b` FROM t /* ; */", "SELECT `a;b` FROM t"),
        ("SELECT 'it''s', 'a\\'b'", "SELECT 'it''s', 'a\\'b'"),
        ("SELECT format FROM t", "SELECT format FROM t"),
    ],
)
def test_read_only_statements_pass(sql: str, expected: str) -> None:
    assert read_only_query(sql) == expected


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("", "empty"),
        ("-- only a comment", "empty"),
        ("INSERT INTO tracks (id) VALUES ('x')", "read-only"),
        ("DROP TABLE tracks", "read-only"),
        ("ALTER TABLE tracks DELETE WHERE 1", "read-only"),
        ("OPTIMIZE TABLE tracks FINAL", "read-only"),
        ("SET readonly = 0", "read-only"),
        ("SELECT 1; DROP TABLE tracks", "one statement"),
        ("SELECT 1 INTO OUTFILE '/tmp/x'", "OUTFILE"),
        ("SELECT 1 FORMAT JSON", "FORMAT"),
        ("SELECT 'unterminated", "unterminated"),
    ],
)
def test_anything_else_is_refused_with_the_reason(sql: str, says: str) -> None:
    with pytest.raises(NotReadOnly, match=says):
        read_only_query(sql)


async def test_the_query_session_itself_cannot_write(
    open_warehouse: Callable[..., Awaitable[ClickHouseWarehouse]],
) -> None:
    """Past the statement check, ClickHouse's readonly setting still refuses writes and
    table functions that reach outside (file(), url())."""
    warehouse = await open_warehouse()
    for sql in (
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT * FROM tracks SETTINGS readonly = 0",
        "WITH 1 AS x SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
    ):
        with pytest.raises(QueryError, match=r"readonly|READONLY|Cannot"):
            await warehouse.query(sql)
    # And the session still answers after each refusal.
    assert (await warehouse.query("SELECT 41 + 1 AS answer")).rows == [[42]]


async def test_a_missing_table_is_explained(
    open_warehouse: Callable[..., Awaitable[ClickHouseWarehouse]],
) -> None:
    warehouse = await open_warehouse()
    with pytest.raises(QueryError, match="created by the first event"):
        await warehouse.query("SELECT count() FROM tracks")
