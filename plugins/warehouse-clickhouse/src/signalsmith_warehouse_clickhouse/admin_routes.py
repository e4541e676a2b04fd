"""``POST /api/v1/admin/sql``: read-only SQL against the warehouse this process holds.

An embedded (chDB) warehouse can be opened by one process only, the one that runs the worker;
this endpoint is how anything else (`signalsmith sql`) reads it. Like every admin route it sits
behind the admin-token guard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from litestar import post
from litestar.exceptions import ClientException, HTTPException
from litestar.params import Body

from signalsmith import Runtime, RuntimeDependency
from signalsmith_warehouse_clickhouse.readonly import NotReadOnly
from signalsmith_warehouse_clickhouse.warehouse import (
    QUERY_ROW_LIMIT,
    ClickHouseWarehouse,
    QueryError,
    QueryResult,
    WarehouseUnavailable,
)


class SqlRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One read-only statement, and the most rows to return."""

    sql: str
    limit: int = 1000


def sql_route(held: Callable[[Runtime], ClickHouseWarehouse | None]) -> Any:
    """The route handler; ``held(runtime)`` is the warehouse this process holds, or None."""

    @post("/sql", status_code=200)
    async def run_sql(
        runtime: RuntimeDependency, data: Annotated[SqlRequest, Body()]
    ) -> QueryResult:
        """Run one read-only SQL statement against the warehouse this server holds."""
        holder = held(runtime)
        if holder is None:
            raise HTTPException(
                status_code=409,
                detail=(
                    "this process does not hold the warehouse: an embedded (chdb://) warehouse "
                    "is held by the process that runs the worker. Run `signalsmith sql` where "
                    "that process's data directory is, or use a ClickHouse server "
                    "(SIGNALSMITH_WAREHOUSE_DSN=http://...)"
                ),
            )
        try:
            return await holder.query(data.sql, limit=min(max(1, data.limit), QUERY_ROW_LIMIT))
        except (NotReadOnly, QueryError) as error:
            raise ClientException(detail=str(error)) from error
        except WarehouseUnavailable as error:
            raise HTTPException(status_code=503, detail=str(error)) from error

    return run_sql
