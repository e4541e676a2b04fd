"""``POST /api/v1/admin/sql``: read-only SQL against the warehouse this process holds.

An embedded (chDB) warehouse can be opened by one process only, the one that runs the worker;
this endpoint is how anything else (`signalsmith sql`) reads it. Like every admin route it sits
behind the admin-token guard. A query whose client goes away before the answer is stopped in
the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from litestar import Request, post
from litestar.exceptions import ClientException, HTTPException
from litestar.params import Body
from litestar.types import Receive

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
        runtime: RuntimeDependency,
        request: Request[Any, Any, Any],
        data: Annotated[SqlRequest, Body()],
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
        limit = min(max(1, data.limit), QUERY_ROW_LIMIT)
        query = asyncio.ensure_future(holder.query(data.sql, limit=limit))
        gone = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait((query, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not query.done():
                # The client went away (or this handler was cancelled): cancelling the query
                # stops it in the engine, and nobody is left to answer.
                query.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await query
        if query.cancelled():
            raise HTTPException(status_code=499, detail="the client closed the request")
        try:
            return query.result()
        except (NotReadOnly, QueryError) as error:
            raise ClientException(detail=str(error)) from error
        except WarehouseUnavailable as error:
            raise HTTPException(status_code=503, detail=str(error)) from error

    return run_sql


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away (its request body is read by then)."""
    while (await receive())["type"] != "http.disconnect":
        pass
