"""What the debugger keeps per process, attached to the runtime at startup."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from signalsmith_debugger.access import TokenStore
from signalsmith_debugger.config import DebuggerConfig
from signalsmith_debugger.live import Hub
from signalsmith_debugger.recorder import Recorder
from signalsmith_debugger.store import DebuggerKeys, Janitor, TraceReader

if TYPE_CHECKING:
    from signalsmith import Runtime

log = logging.getLogger("signalsmith.debugger")

NAME = "debugger"
# The processes that observe outcomes; a CLI command only reads.
RECORDING_ROLES = frozenset({"collector", "worker", "embedded"})


class DebuggerState:
    """The recorder (where outcomes are observed), the janitor, the live feeds, the stores."""

    def __init__(self, runtime: Runtime, config: DebuggerConfig) -> None:
        self.config = config
        self.keys = DebuggerKeys.of(runtime)
        self.tokens = TokenStore(runtime.redis, self.keys)
        self.traces = TraceReader(runtime.redis, self.keys, config)
        self.janitor = Janitor(runtime.redis, self.keys, config)
        self.hub = Hub(config)
        self.recorder = Recorder(runtime, config) if runtime.role in RECORDING_ROLES else None
        self._janitor_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.recorder is not None:
            await self.recorder.start()
            self._janitor_task = asyncio.create_task(self._tidy(), name="debugger-janitor")

    async def stop(self) -> None:
        if self._janitor_task is not None:
            self._janitor_task.cancel()
            try:
                await self._janitor_task
            except asyncio.CancelledError:
                pass
        if self.recorder is not None:
            await self.recorder.stop()

    async def _tidy(self) -> None:
        while True:
            await asyncio.sleep(self.config.janitor_seconds)
            try:
                await self.janitor.run_once()
            except (RedisError, OSError) as error:
                log.warning("debugger: the janitor cannot reach Redis: %s", error)
            except Exception:
                log.exception("debugger: the janitor failed")
