"""What the health endpoints know: the process, its companions, and the embedded Redis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from signalsmith.config import Settings
from signalsmith.embedded import RedisServerProcess
from signalsmith.runtime import Runtime
from signalsmith.supervisor import read_status


class Companion(Protocol):
    """Work that runs beside the collector in its process, started and stopped with it: the
    embedded serve's worker (``signalsmith.embedded_worker``)."""

    async def start(self, runtime: Runtime) -> None:
        """Begin, once the runtime has started."""

    def problems(self) -> list[str]:
        """What is wrong with it now, for the health endpoints (empty when nothing is)."""

    async def stop(self, requests_in_flight: Callable[[], int]) -> None:
        """Finish, once the server has stopped accepting and its requests are answered
        (``requests_in_flight()`` says how many still run), before the runtime stops."""


class Health(msgspec.Struct, frozen=True):
    status: str
    detail: str = ""


class Readiness(Health, frozen=True):
    # The workspace version this process runs (None: no workspace applied).
    workspace_version: int | None = None


class HealthCheck:
    """What ``/healthz`` and ``/readyz`` know beyond Redis answering: the companions running in
    this process (the embedded worker) and, under the embedded serve, the embedded Redis as its
    supervisor (in the serve process) last described it."""

    def __init__(self, settings: Settings, companions: Sequence[Companion] = ()) -> None:
        self.companions = companions
        embedded = (
            RedisServerProcess(settings.data_path / "redis", unix_socket=True)
            if settings.redis_url is not None
            else None
        )
        # Only when this process uses the embedded Redis of its data directory.
        self.redis_dir: Path | None = (
            embedded.data_dir
            if embedded is not None and embedded.url == settings.redis_url
            else None
        )

    def problems(self) -> list[str]:
        found = [problem for companion in self.companions for problem in companion.problems()]
        if self.redis_dir is not None:
            status = read_status(self.redis_dir)
            if status is not None and status.state != "running":
                found.append(f"redis: {status.detail}")
        return found

    def redis_detail(self) -> str:
        status = read_status(self.redis_dir) if self.redis_dir is not None else None
        return f"redis: {status.detail}" if status is not None else ""
