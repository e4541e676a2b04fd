"""Every process follows the current workspace version: ``runtime.workspace``.

A background task listens on the changes channel (a new version wakes it at once) and looks at
the current version number at least every ``poll_seconds`` (so a lost message, or a channel that
is down, delays a switch by a second at most). A new version is read, checked against this
process's plugins, built (``active.build_active``), and only then swapped in, as one reference:
a request or a batch that started on the old version finishes on it. A version this process
cannot run (a plugin missing here, an environment variable not set) is logged once and the
process stays on the version it runs; ``status()`` says which it runs and which it could not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from signalsmith.hooks import PluginConfigError
from signalsmith.records import Source
from signalsmith.workspace.active import ActiveWorkspace, BuildFailed, build_active
from signalsmith.workspace.store import StoredVersion, WorkspaceStore
from signalsmith.workspace.text import Unreadable, read_document
from signalsmith.workspace.validation import Registry, WorkspaceInvalid, check_document

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("signalsmith.workspace")

POLL_SECONDS = 1.0


class UnknownSource(Exception):
    """A request's key belongs to a source the workspace does not list."""

    def __init__(self, source: Source, version: int, listed: list[str]) -> None:
        super().__init__(
            f"source {source.name!r} is not in the workspace (version {version}, sources: "
            f"{', '.join(listed) or 'none'}); add it under `sources:` and run `signalsmith "
            f"config apply`, or send with a key of a listed source"
        )
        self.source = source


class WorkspaceUnavailable(PluginConfigError):
    """The current version cannot be run by a process that must run it to start."""


class WorkspaceStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a process runs, for `/readyz`, the admin status and logs."""

    # The version this process runs; None when no workspace is applied (every source and
    # every installed sink, as before workspaces).
    version: int | None = None
    # A newer version this process could not run, and why (it stays on ``version``).
    failed_version: int | None = None
    error: str | None = None
    process: str = ""


class Workspace:
    """The version this process runs, followed live (module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        key: Callable[..., str],
        registry: Registry,
        *,
        collects: bool,
        delivers: bool,
        environ: Mapping[str, str] | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.store = WorkspaceStore(redis, key)
        self.redis = redis
        self.registry = registry
        self.collects = collects
        self.delivers = delivers
        self.environ = environ
        self.poll_seconds = poll_seconds
        # The version in use; read once per request or batch, swapped whole.
        self.active: ActiveWorkspace | None = None
        self.failed_version: int | None = None
        self.error: str | None = None
        self._listeners: list[Callable[[ActiveWorkspace], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()
        self.process = f"{socket.gethostname()}:{os.getpid()}"

    # --- the request path ---------------------------------------------------------------

    def attach(self, source: Source) -> Source:
        """``source`` with its pipeline in the version in use (one dict lookup), or the source
        as it is when no workspace is applied. Raises ``UnknownSource`` when it is not listed."""
        active = self.active
        if active is None:
            return source
        pipeline = active.pipelines.get(source.id)
        if pipeline is None:
            raise UnknownSource(source, active.version, sorted(active.pipelines))
        return msgspec.structs.replace(source, pipeline=pipeline)

    # --- following ----------------------------------------------------------------------

    def on_change(self, listener: Callable[[ActiveWorkspace], None]) -> None:
        """Call ``listener(active)`` after every switch to a new version (the worker's sinks)."""
        self._listeners.append(listener)

    def status(self) -> WorkspaceStatus:
        active = self.active
        return WorkspaceStatus(
            version=active.version if active is not None else None,
            failed_version=self.failed_version,
            error=self.error,
            process=self.process,
        )

    async def start(self, *, required: bool) -> None:
        """Load the current version, then follow changes in the background.

        When ``required`` (collectors and workers), a current version this process cannot run
        stops it from starting (``WorkspaceUnavailable``); otherwise (CLI commands) it is logged.
        """
        await self.refresh()
        if self.error is not None and self.active is None and required:
            raise WorkspaceUnavailable(self.error)
        self._task = asyncio.get_running_loop().create_task(
            self._follow(), name="signalsmith workspace"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=self.poll_seconds * 3)

    async def refresh(self) -> bool:
        """Switch to the current version if it is newer than the one in use and this process
        can run it; True when it switched."""
        async with self._lock:
            number = await self.store.current_version()
            active = self.active
            if number == 0 or (active is not None and active.version == number):
                return False
            if number == self.failed_version:
                return False
            stored = await self.store.get(number)
            if stored is None:
                return False
            try:
                built = self.build(stored)
                built.stream_position = await self.store.position(number)
            except (BuildFailed, WorkspaceInvalid) as error:
                self.failed_version = number
                self.error = f"version {number} cannot run in this process: {error}"
                log.error(
                    "workspace %s; %s",
                    self.error,
                    f"staying on version {active.version}" if active else "no version runs",
                )
                return False
            self.active = built
            self.failed_version = None
            self.error = None
        # CLI commands load the version too; only the processes that run it say so.
        log.log(
            logging.INFO if self.collects or self.delivers else logging.DEBUG,
            "workspace version %d in use (%d sources, %d destinations)",
            number,
            len(built.pipelines),
            len(built.destinations),
        )
        for listener in self._listeners:
            try:
                listener(built)
            except Exception:
                log.exception("a workspace listener failed on version %d", number)
        return True

    def build(self, stored: StoredVersion) -> ActiveWorkspace:
        """Check ``stored`` against this process's plugins and build it (or raise)."""
        try:
            read = read_document(stored.document)
        except Unreadable as error:
            raise BuildFailed(str(error)) from None
        document = check_document(read, self.registry)
        return build_active(
            stored,
            document,
            self.registry,
            collects=self.collects,
            delivers=self.delivers,
            environ=self.environ,
        )

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except (RedisError, OSError) as error:
            log.warning("workspace: cannot read the current version (%s); retrying", error)
        except Exception:
            log.exception("workspace: loading the current version failed")

    async def _follow(self) -> None:
        while not self._stopping:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.store.changes_channel)
                while not self._stopping:
                    # A published version wakes this at once; otherwise it polls.
                    await pubsub.get_message(timeout=self.poll_seconds)
                    await self._refresh_logged()
            except Exception as error:  # the follower outlives Redis outages
                log.warning("workspace changes channel lost (%s); polling", error)
                await asyncio.sleep(self.poll_seconds)
                await self._refresh_logged()
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
