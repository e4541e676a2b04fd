"""The admin API under ``/api/v1/admin/contracts``: the violations report and the shadow report,
as ``signalsmith contracts violations`` and ``shadow-report`` print them."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get
from litestar.exceptions import ClientException
from litestar.params import QueryParameter

from signalsmith import RuntimeDependency
from signalsmith_contracts.report import (
    ShadowReport,
    ViolationsReport,
    parse_duration,
    shadow_report,
    violations_report,
)
from signalsmith_contracts.store import ContractsStore, violations_maxlen


@get("/contracts/violations")
async def violations(
    runtime: RuntimeDependency,
    since: Annotated[str, QueryParameter()] = "1h",
    source: Annotated[str | None, QueryParameter()] = None,
    samples: Annotated[int, QueryParameter()] = 1,
) -> ViolationsReport:
    """Violations per source, event and rule over the window (``since``: 1h, 24h, 7d...)."""
    try:
        seconds = parse_duration(since)
    except ValueError as error:
        raise ClientException(detail=str(error)) from error
    store = ContractsStore(runtime, violations_maxlen())
    return await violations_report(store, seconds, source=source, samples=max(0, min(samples, 20)))


@get("/contracts/shadow-report")
async def shadow(
    runtime: RuntimeDependency, source: Annotated[str | None, QueryParameter()] = None
) -> ShadowReport:
    """What each source's shadow plan would have done, beside its enforced plan."""
    return await shadow_report(runtime, ContractsStore(runtime, violations_maxlen()), source=source)


def routes() -> list[Any]:
    return [violations, shadow]
