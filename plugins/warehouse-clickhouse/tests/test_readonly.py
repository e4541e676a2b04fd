"""What `signalsmith sql` agrees to run (decided from ClickHouse's own parse), and what the
engine refuses even when asked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from signalsmith_warehouse_clickhouse import (
    ClickHouseWarehouse,
    NotReadOnly,
    QueryError,
    checked_statement,
)
from signalsmith_warehouse_clickhouse.warehouse import literal

if TYPE_CHECKING:
    from conftest import Canaries

DATABASE = "warehouse_db"


@pytest.fixture(scope="module")
def ask(chdb_dir: Path) -> Iterator[Callable[[str], Any]]:
    """One value from a query in a read-only session, as the warehouse asks for its check."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    client.command("SET readonly = 1")
    yield lambda sql: client.query(sql).result_rows[0][0]
    client.close()


@pytest.mark.parametrize(
    ("sql", "runs"),
    [
        ("SELECT 1", "SELECT 1"),
        ("  select count() from tracks ;; ", "SELECT count() FROM tracks"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x"),
        ("(SELECT 1)", "SELECT 1"),
        ("SELECT ';' AS semi -- a comment; with a semicolon", "SELECT ';' AS semi"),
        ("SELECT `a;b` FROM t /* ; */", "SELECT `a;b` FROM t"),
        ("SELECT 'it''s', 'a\\'b'", "SELECT 'it\\'s', 'a\\'b'"),
        ("SELECT format FROM t", "SELECT format FROM t"),
        ("SELECT 1 # a comment", "SELECT 1"),
        ("SELECT 1 AS `two\nlines`", "SELECT 1 AS `two\\nlines`"),
        (f"SELECT * FROM {DATABASE}.tracks", f"SELECT * FROM {DATABASE}.tracks"),
        (
            "SELECT * FROM tracks WHERE user_id IN users",
            "SELECT * FROM tracks WHERE user_id IN (users)",
        ),
        (
            "SELECT count(DISTINCT user_id), countIf(event = 'x'), quantileExact(0.9)(n) FROM t",
            "SELECT countDistinct(user_id), countIf(event = 'x'), quantileExact(0.9)(n) FROM t",
        ),
        (
            "SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY received_at) FROM t",
            "SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY received_at ASC) FROM t",
        ),
        ("SELECT arrayMap(x -> x * 2, [1, 2])", "SELECT arrayMap(x -> (x * 2), [1, 2])"),
        (
            "SELECT COLUMNS('context_.*') APPLY toString FROM t",
            "SELECT COLUMNS('context_.*') APPLY toString FROM t",
        ),
        ("SELECT * FROM numbers(10)", "SELECT * FROM numbers(10)"),
        (
            "SELECT * FROM (VALUES (1), (2))",
            "SELECT * FROM (SELECT * FROM SQLStandardValues((1), (2)))",
        ),
        ("SHOW TABLES", "SHOW TABLES"),
        ("SHOW TABLES LIKE 'order%'", "SHOW TABLES LIKE 'order%'"),
        (f"SHOW TABLES FROM {DATABASE}", f"SHOW TABLES FROM {DATABASE}"),
        ("SHOW COLUMNS FROM tracks", "SHOW COLUMNS FROM tracks"),
        ("DESCRIBE tracks", "DESCRIBE TABLE tracks"),
        ("desc (SELECT 1 AS a)", "DESCRIBE TABLE (SELECT 1 AS a)"),
        ("DESCRIBE numbers(3)", "DESCRIBE TABLE numbers(3)"),
        ("SHOW CREATE TABLE tracks", "SHOW CREATE TABLE tracks"),
        ("EXISTS tracks", "EXISTS TABLE tracks"),
        ("EXPLAIN SELECT 1", "EXPLAIN SELECT 1"),
        ("EXPLAIN PLAN actions = 1 SELECT 1", "EXPLAIN actions = 1 SELECT 1"),
        ("EXPLAIN AST SELECT 1", "EXPLAIN AST SELECT 1"),
        ("EXPLAIN QUERY TREE SELECT 1", "EXPLAIN QUERY TREE SELECT 1"),
    ],
)
def test_read_only_statements_run_as_clickhouse_formats_them(
    ask: Callable[[str], Any], sql: str, runs: str
) -> None:
    assert checked_statement(sql, DATABASE, ask) == runs


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
        ("USE system", "read-only"),
        ("KILL QUERY WHERE 1", "read-only"),
        ("SYSTEM FLUSH LOGS", "read-only"),
        ("SHOW DATABASES", "not 'SHOW DATABASES'"),
        ("SHOW PROCESSLIST", "read-only"),
        ("SHOW SETTINGS LIKE 'max%'", "read-only"),
        ("SHOW TEMPORARY TABLES", "read-only"),
        ("EXISTS DATABASE system", "read-only"),
        ("SELECT 1; DROP TABLE tracks", "one statement"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("SELECT 1 INTO OUTFILE '/tmp/x'", "OUTFILE"),
        ("SELECT 1 FORMAT JSON", "FORMAT"),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
        ("SELECT * FROM (SELECT 1 SETTINGS max_execution_time = 0)", "SETTINGS"),
        ("DESCRIBE tracks SETTINGS describe_compact_output = 1", "nothing after it"),
        ("DESCRIBE tracks FORMAT JSON", "nothing after it"),
        ("SELECT {id:String}", "query parameters"),
        ("SELECT * FROM system.one", "only the warehouse's own tables"),
        ("SELECT * FROM INFORMATION_SCHEMA.TABLES", "only the warehouse's own tables"),
        ("SELECT * FROM tracks JOIN other.canary USING id", "other.canary is outside"),
        ("SELECT 1 IN other.canary", "other.canary is outside"),
        ("SHOW TABLES FROM system", "database 'system' is outside"),
        ("SHOW COLUMNS FROM canary FROM other", "other.canary is outside"),
        ("SHOW CREATE TABLE system.users", "system.users is outside"),
        ("EXISTS TABLE other.canary", "other.canary is outside"),
        ("SELECT file('/etc/hostname')", "file() is not allowed here: it reads a file"),
        ("SELECT `file`('/etc/hostname')", "file() is not allowed"),
        ("SELECT FILE('/etc/hostname')", "FILE() is not a function"),
        ("SELECT * APPLY (x -> file(x)) FROM t", "file() is not allowed"),
        ("SELECT dictGet('d', 'a', 1)", "dictGet() is not allowed here: it reads a dictionary"),
        ("SELECT joinGet('other.j', 'v', 1)", "joinGet() is not allowed"),
        ("SELECT AIGenerate('hello')", "AI provider"),
        ("SELECT cout()", "cout() is not a function `signalsmith sql` knows"),
        ("SELECT __getScalar('x')", "internal to the engine"),
        ("SELECT * FROM url('http://127.0.0.1:9/', 'CSV')", "table function url()"),
        ("SELECT * FROM merge('other', '.*')", "table function merge()"),
        ("SELECT * FROM view(SELECT 1)", "table function view()"),
        ("SELECT * FROM NUMBERS(3)", "table function NUMBERS()"),
        ("EXPLAIN CURRENT TRANSACTION", "EXPLAIN CURRENT TRANSACTION is not allowed"),
        ("EXPLAIN TABLE OVERRIDE mysql('a', 'b', 'c', 'd', 'e') PARTITION BY x", "not allowed"),
        ("EXPLAIN max_threads = 1 SELECT 1", "option 'max_threads'"),
        ("EXPLAIN AST DESCRIBE tracks", "read-only"),
        ("SELECT " + "abs(" * 400 + "1" + ")" * 400, "nests too deeply"),
    ],
)
def test_anything_else_is_refused_with_the_reason(
    ask: Callable[[str], Any], sql: str, says: str
) -> None:
    with pytest.raises(NotReadOnly, match=says.replace("(", r"\(").replace(")", r"\)")):
        checked_statement(sql, DATABASE, ask)


def test_the_reader_user_statements_in_the_readme_parse(ask: Callable[[str], Any]) -> None:
    """No ClickHouse server runs where these tests do: the README's CREATE USER and GRANT are
    checked as far as the engine's parser can."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("### A reader user")[1].split("```sql\n")[1].split("```")[0]
    statements = [text.strip() for text in block.split(";") if text.strip()]
    assert [statement.split()[0] for statement in statements] == ["CREATE", "GRANT"]
    for statement in statements:
        assert ask(f"SELECT formatQuerySingleLine({literal(statement)})")


def test_a_query_clickhouse_cannot_parse_gets_its_reason(ask: Callable[[str], Any]) -> None:
    with pytest.raises(Exception, match="Syntax error"):
        checked_statement("SELECT 'unterminated", DATABASE, ask)


def test_checking_a_query_reaches_nothing(canaries: Canaries, chdb_dir: Path) -> None:
    """The check's own queries only format and parse the query, which travels as a string: even
    in a session that is not read-only, nothing it names is fetched, connected to or read."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    statements = [
        f"DESCRIBE url('{canaries.http.url}/a.jsonl', 'JSONEachRow')",
        f"SELECT * FROM url('{canaries.http.url}/a.jsonl', 'JSONEachRow')",
        f"DESCRIBE s3('{canaries.http.url}/canary-bucket/a.jsonl', 'JSONEachRow')",
        f"DESCRIBE remote('{canaries.tcp.address}', system.one)",
        f"DESCRIBE mysql('{canaries.tcp.address}', 'db', 't', 'user', 'password')",
        f"SELECT file('{canaries.file}')",
        f"SELECT * FROM {canaries.database}.canary",
    ]
    try:
        for statement in statements:
            with pytest.raises(NotReadOnly):
                checked_statement(statement, DATABASE, lambda q: client.query(q).result_rows[0][0])
    finally:
        client.close()
    canaries.assert_untouched()


async def test_the_query_session_itself_cannot_write_or_reach_out(
    open_warehouse: Callable[..., Awaitable[ClickHouseWarehouse]], canary_file: Path
) -> None:
    """The second wall: past the check, the session (ClickHouse's readonly = 1) still refuses
    writes, setting changes and table functions that reach outside."""
    warehouse = await open_warehouse()
    session = warehouse._open_reader()
    try:
        for sql in (
            "CREATE TABLE sneaky (a UInt8) ENGINE = Memory",
            "SELECT 1 SETTINGS readonly = 0",
            "SET final = 0",
            f"SELECT * FROM file('{canary_file}', 'LineAsString')",
            "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
        ):
            with pytest.raises(Exception, match=r"readonly|READONLY"):
                session.client.query(sql)
    finally:
        session.client.close()
    # And queries still get answers afterwards.
    assert (await warehouse.query("SELECT 41 + 1 AS answer")).rows == [[42]]


async def test_a_missing_table_is_explained(
    open_warehouse: Callable[..., Awaitable[ClickHouseWarehouse]],
) -> None:
    warehouse = await open_warehouse()
    with pytest.raises(QueryError, match="created by the first event"):
        await warehouse.query("SELECT count() FROM tracks")
