"""What `signalsmith sql` and `POST /api/v1/admin/sql` must never reach: a file on the server, a
URL, another server, another database. Issue 9 listed each hole; each has a regression test here
through both ways in, with canaries (conftest.py) that tell whether anything got through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from signalsmith import Settings
from signalsmith.testing import build_cli, collector_app
from signalsmith_warehouse_clickhouse import ClickHouseWarehouse, NotReadOnly, QueryError

if TYPE_CHECKING:
    from conftest import Canaries

PLUGIN = "warehouse-clickhouse"
ADMIN_TOKEN = "ssadm_sql-safety-test-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# Each hole as the issue reported it: a statement, and what the refusal names.
HOLES: dict[str, tuple[Callable[[Canaries], str], str]] = {
    "DESCRIBE file()": (
        lambda c: f"DESCRIBE file('{c.file}', 'TSVWithNames')",
        "table function file()",
    ),
    "SELECT file()": (lambda c: f"SELECT file('{c.file}')", "file() is not allowed"),
    "SELECT FROM file()": (
        lambda c: f"SELECT * FROM file('{c.file}', 'LineAsString')",
        "table function file()",
    ),
    "DESCRIBE url()": (
        lambda c: f"DESCRIBE url('{c.http.url}/events.jsonl', 'JSONEachRow')",
        "table function url()",
    ),
    "SELECT FROM url() with a structure": (
        lambda c: f"SELECT * FROM url('{c.http.url}/events.jsonl', 'JSONEachRow', 'secret String')",
        "table function url()",
    ),
    "DESCRIBE s3()": (
        lambda c: f"DESCRIBE s3('{c.http.url}/canary-bucket/events.jsonl', 'JSONEachRow')",
        "table function s3()",
    ),
    "DESCRIBE remote()": (
        lambda c: f"DESCRIBE remote('{c.tcp.address}', system.one)",
        "table function remote()",
    ),
    "DESCRIBE mysql()": (
        lambda c: f"DESCRIBE mysql('{c.tcp.address}', 'db', 'events', 'user', 'password')",
        "table function mysql()",
    ),
    "DESCRIBE postgresql()": (
        lambda c: f"DESCRIBE postgresql('{c.tcp.address}', 'db', 'events', 'user', 'password')",
        "table function postgresql()",
    ),
    "DESCRIBE hdfs()": (
        lambda c: f"DESCRIBE hdfs('hdfs://{c.tcp.address}/events.csv')",
        "table function hdfs()",
    ),
    "another database": (
        lambda c: f"SELECT secret FROM {c.database}.canary",
        "only the warehouse's own tables",
    ),
    "another database through IN": (
        lambda c: f"SELECT count() FROM numbers(1) WHERE '{c.secret}' IN {c.database}.canary",
        "only the warehouse's own tables",
    ),
    "system tables": (lambda c: "SELECT * FROM system.tables", "only the warehouse's own tables"),
}


@pytest.fixture
def warehouse_env(monkeypatch: pytest.MonkeyPatch, chdb_dir: Path, database: str) -> None:
    for name in ("DSN", "DATABASE", "QUERY_TIMEOUT_SECONDS", "QUERY_CONCURRENCY"):
        monkeypatch.delenv(f"SIGNALSMITH_WAREHOUSE_{name}", raising=False)
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_DSN", f"chdb://{chdb_dir}")
    monkeypatch.setenv("SIGNALSMITH_WAREHOUSE_DATABASE", database)


def admin_app(settings: Settings) -> Any:
    """The app of an embedded `signalsmith serve`: it holds the warehouse, answers admin SQL."""
    settings = msgspec.structs.replace(settings, admin_token=ADMIN_TOKEN, embedded_worker=True)
    return collector_app(settings, entry_points=[PLUGIN])


@pytest.mark.usefixtures("warehouse_env")
@pytest.mark.parametrize("hole", list(HOLES))
async def test_each_hole_is_refused_through_the_admin_api(
    hole: str, canaries: Canaries, settings: Settings
) -> None:
    statement, says = HOLES[hole]
    async with AsyncTestClient(admin_app(settings)) as client:
        response = await client.post(
            "/api/v1/admin/sql", json={"sql": statement(canaries)}, headers=ADMIN
        )
    assert response.status_code == 400, response.text
    assert says in response.json()["message"]
    canaries.assert_untouched(response.text)


@pytest.mark.usefixtures("warehouse_env")
@pytest.mark.parametrize("hole", list(HOLES))
async def test_each_hole_is_refused_by_signalsmith_sql(
    hole: str,
    canaries: Canaries,
    settings: Settings,
    open_warehouse: Callable[..., Awaitable[ClickHouseWarehouse]],
) -> None:
    """The command opens the warehouse itself here (no server runs in this data directory)."""
    await open_warehouse()
    statement, says = HOLES[hole]
    result = CliRunner().invoke(build_cli(settings), ["sql", statement(canaries)])
    assert result.exit_code == 1, result.output
    assert says in result.output
    canaries.assert_untouched(result.output)


# --- the property: whatever is made of these pieces, nothing is reached ----------------------


def _forbidden_sources(c: Canaries) -> list[str]:
    http, tcp, path = c.http.url, c.tcp.address, c.file
    return [
        f"file('{path}', 'LineAsString')",
        f"FILE('{path}', 'LineAsString')",
        f"`file`('{path}', 'TSVWithNames')",
        f"url('{http}/a.jsonl', 'JSONEachRow')",
        f"URL('{http}/a.jsonl', 'JSONEachRow', 'secret String')",
        f"s3('{http}/canary-bucket/a.jsonl', 'JSONEachRow')",
        f"remote('{tcp}', system.one)",
        f"remoteSecure('{tcp}', {c.database}.canary)",
        f"mysql('{tcp}', 'db', 't', 'user', 'password')",
        f"postgresql('{tcp}', 'db', 't', 'user', 'password')",
        f"hdfs('hdfs://{tcp}/a.csv', 'CSV', 'secret String')",
        f"jdbc('jdbc:mysql://{tcp}/db', 'db', 't')",
        f"odbc('DSN=canary;Server={tcp}', 'db', 't')",
        f"executable('cat {path}', 'LineAsString', 'line String')",
        "input('secret String')",
        f"cluster('default', {c.database}.canary)",
        f"merge('{c.database}', '.*')",
        f"merge({c.database}, 'canary')",
        "dictionary('canary')",
        f"sqlite('{path}', 'canary')",
        f"loop({c.database}.canary)",
        f"mongodb('{tcp}', 'db', 't', 'user', 'password', 'secret String')",
        f"redis('{tcp}', 'secret', 'secret String')",
        f"urlCluster('default', '{http}/a.jsonl', 'JSONEachRow')",
        f"fileCluster('default', '{path}', 'LineAsString')",
        f"filesystem('{path.parent}')",
        f"mergeTreeIndex({c.database}, canary)",
        f"view(SELECT secret FROM {c.database}.canary)",
        f"{c.database}.canary",
        f"`{c.database}`.`canary`",
        "system.tables",
        "INFORMATION_SCHEMA.TABLES",
        "information_schema.columns",
    ]


def _forbidden_scalars(c: Canaries) -> list[str]:
    return [
        f"file('{c.file}')",
        f"file('{c.file}', 'secret')",
        f"dictGet('{c.database}.dict', 'secret', 1)",
        f"joinGet('{c.database}.canary', 'secret', 1)",
        f"hasColumnInTable('{c.database}', 'canary', 'secret')",
        f"hasColumnInTable('{c.tcp.address}', 'db', 't', 'c')",
        "aiGenerate('x')",
        "showCertificate()",
        f"(SELECT secret FROM {c.database}.canary)",
        f"(SELECT * FROM url('{c.http.url}/a.jsonl', 'LineAsString'))",
    ]


HARMLESS_SOURCES = ["numbers(3)", "(SELECT 1 AS x)", "values('x UInt8', 1, 2)", "zeros(2)"]
HARMLESS_SCALARS = ["1", "'a'", "[1, 2]", "toString(42)", "(SELECT 7)", "now() > 0"]
SETTINGS_CLAUSES = [
    "",
    " SETTINGS readonly = 0",
    " SETTINGS max_execution_time = 0, max_memory_usage = 0",
    " SETTINGS allow_ddl = 1",
    " SETTINGS final = 0",
]
SEPARATORS = [" ", "\n", " /* ; */ ", " -- ;\n", " # c\n", "\t", " /* a /* nested */ */ "]


def _vary_case(draw: st.DrawFn, text: str) -> str:
    mode = draw(st.sampled_from(["as is", "lower", "upper"]))
    return {"as is": text, "lower": text.lower(), "upper": text.upper()}[mode]


@st.composite
def queries(draw: st.DrawFn, c: Canaries) -> str:
    """A statement built around at least one thing that reaches outside."""
    forbidden_source = draw(st.sampled_from(_forbidden_sources(c)))
    forbidden_scalar = draw(st.sampled_from(_forbidden_scalars(c)))
    harmless_source = draw(st.sampled_from(HARMLESS_SOURCES))
    harmless_scalar = draw(st.sampled_from(HARMLESS_SCALARS))
    source = draw(st.sampled_from([forbidden_source, harmless_source]))
    scalar = draw(st.sampled_from([forbidden_scalar, harmless_scalar]))
    if source == harmless_source and scalar == harmless_scalar:
        # Always something forbidden somewhere; the harmless half may still run.
        if draw(st.booleans()):
            source = forbidden_source
        else:
            scalar = forbidden_scalar
    sep = draw(st.sampled_from(SEPARATORS))
    select = _vary_case(draw, "SELECT")
    from_ = _vary_case(draw, "FROM")
    inner = f"{select}{sep}{scalar} AS v{sep}{from_} {source}"
    shape = draw(
        st.sampled_from(
            [
                "{inner}",
                "SELECT * FROM ({inner})",
                "WITH w AS ({inner}) SELECT * FROM w",
                "SELECT 1 UNION ALL {inner}",
                "{inner} UNION DISTINCT SELECT 2",
                "SELECT * FROM numbers(1) WHERE 1 IN ({inner})",
                "SELECT [({inner}), 1]",
                "SELECT toString(({inner}))",
                "SELECT * FROM numbers(1) AS n JOIN ({inner}) AS q ON 1",
                "SELECT * FROM numbers(1) AS n JOIN {source} AS q ON 1",
                "SELECT count() FROM numbers(1) WHERE 'x' IN {source}",
                "SELECT {scalar} FROM numbers(1) WHERE {scalar} != ''",
                "SELECT arrayMap(x -> {scalar}, [1])",
                "SELECT * APPLY (x -> {scalar}) FROM {source}",
                "DESCRIBE {source}",
                "DESC TABLE ({inner})",
                "EXPLAIN SELECT * FROM {source}",
                "EXPLAIN PIPELINE {inner}",
                "EXPLAIN QUERY TREE {inner}",
                "EXPLAIN AST {inner}",
                "SHOW CREATE TABLE {source}",
                "EXISTS TABLE {source}",
                "SELECT 1; {inner}",
                "{inner};",
                "{inner}; SELECT 1",
                "SHOW TABLES FROM {database}",
                "SHOW COLUMNS FROM canary FROM {database}",
            ]
        )
    )
    sql = shape.format(inner=inner, source=source, scalar=scalar, database=c.database)
    return sql + draw(st.sampled_from(SETTINGS_CLAUSES))


async def test_no_query_built_around_a_way_out_reaches_anything(
    open_warehouse: Callable[..., Awaitable[ClickHouseWarehouse]], canaries: Canaries
) -> None:
    """Statements generated around table functions, functions, other databases, settings,
    comments, unions, subqueries, CTEs, case and quoting: each is refused or runs, and none
    reaches the canary file, the HTTP server, the TCP listener or the other database."""
    warehouse = await open_warehouse(query_timeout_seconds=5.0)
    seen = {"refused": 0, "ran": 0}

    @settings(
        max_examples=500,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(queries(canaries))
    def run(sql: str) -> None:
        try:
            result = warehouse.query_sync(sql)
        except (NotReadOnly, QueryError) as error:
            seen["refused"] += 1
            canaries.assert_untouched(str(error))
            return
        seen["ran"] += 1
        canaries.assert_untouched(msgspec.json.encode(result).decode())

    run()
    assert seen["refused"] > 0
