"""ClickHouse warehouse for SignalSmith: Segment's table layout with automatic schema evolution.

The plugin itself is ``signalsmith_warehouse_clickhouse.plugin``; ``ClickHouseWarehouse`` is
here for tools (bench/, tests) that write or read a warehouse without a running worker.
"""

from __future__ import annotations

from signalsmith_warehouse_clickhouse.config import Target, WarehouseConfig, WarehouseConfigError
from signalsmith_warehouse_clickhouse.naming import event_table_candidates, snakecase
from signalsmith_warehouse_clickhouse.readonly import NotReadOnly, checked_statement
from signalsmith_warehouse_clickhouse.warehouse import (
    ClickHouseWarehouse,
    QueryError,
    QueryResult,
    WarehouseUnavailable,
    WriteReport,
)

__version__ = "0.1.0"

__all__ = [
    "ClickHouseWarehouse",
    "NotReadOnly",
    "QueryError",
    "QueryResult",
    "Target",
    "WarehouseConfig",
    "WarehouseConfigError",
    "WarehouseUnavailable",
    "WriteReport",
    "__version__",
    "checked_statement",
    "event_table_candidates",
    "snakecase",
]
