"""Where the warehouse is and how the sink batches: ``SIGNALSMITH_WAREHOUSE_*`` settings.

The core's ``Settings`` holds what every process shares; these belong to this plugin alone, so
they are read here, once, into a frozen record (`docs/configuration.md` lists them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec

ENV_PREFIX = "SIGNALSMITH_WAREHOUSE_"
# Under the core's data directory when no DSN is configured: `signalsmith serve` stores events
# with nothing else installed or configured.
DEFAULT_CHDB_DIR = "warehouse"
DEFAULT_DATABASE = "signalsmith"


class WarehouseConfigError(ValueError):
    """A ``SIGNALSMITH_WAREHOUSE_*`` setting that cannot be used; the message names the fix."""


class WarehouseConfig(msgspec.Struct, frozen=True, kw_only=True):
    # chdb://<path> (the engine in-process) or http(s)://user:pass@host:port/db (a server).
    # None: chDB in <data dir>/warehouse.
    dsn: str | None = None
    # The database the tables live in. None: the DSN's path (http), else "signalsmith".
    database: str | None = None
    # The sink's name: its Redis consumer group and dead-letter stream.
    sink_name: str = "clickhouse"
    # Batching (the worker's): a batch is written when it holds this many events, or this many
    # seconds after its first event arrived, whichever comes first.
    batch_size: int = 10_000
    max_wait_seconds: float = 1.0
    max_attempts: int = 6
    # Most columns a table may have; values for columns past it go to `discards`.
    max_columns: int = 1000
    # Most event tables (one per track event name) one source may create; calls of names past
    # it are in `tracks` only, their properties in `discards`. Creating a table takes the
    # engine tens of milliseconds, during which every source's events wait.
    max_event_tables_per_source: int = 500
    # Most event tables one batch creates, shared among the sources that bring new names;
    # names past it get their tables in later batches. Bounds how long one batch can hold up
    # the events behind it.
    max_new_event_tables_per_batch: int = 100
    # Read-only queries (`signalsmith sql`, the admin SQL endpoint): the engine stops one that
    # runs longer or needs more memory than this, and this many run at once.
    query_timeout_seconds: float = 30.0
    query_max_memory_bytes: int = 1 << 30
    query_concurrency: int = 4
    # http(s)://reader:password@host:8123: the ClickHouse user queries run as, one whose grants
    # allow reading the warehouse's database and nothing else (the README has the GRANTs).
    # None: the DSN's user.
    query_dsn: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WarehouseConfig:
        env = os.environ if environ is None else environ
        fields: dict[str, str] = {}
        for field in msgspec.structs.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw not in (None, ""):
                fields[field.name] = raw
        try:
            config = msgspec.convert(fields, cls, strict=False)
        except msgspec.ValidationError as error:
            # msgspec names the field (`$.batch_size`); say which variable that is.
            reason, _, where = str(error).partition(" - at `$.")
            name = ENV_PREFIX + where.rstrip("`").upper() if where else f"{ENV_PREFIX}*"
            raise WarehouseConfigError(
                f"{name}={env.get(name, '')!r} is not valid: {reason}"
            ) from error
        at_least_one = (
            "batch_size",
            "max_columns",
            "max_event_tables_per_source",
            "max_new_event_tables_per_batch",
        )
        for name in at_least_one:
            if getattr(config, name) < 1:
                raise WarehouseConfigError(
                    f"{ENV_PREFIX}{name.upper()}={getattr(config, name)} is not valid: it must "
                    "be at least 1"
                )
        if config.max_wait_seconds < 0:
            raise WarehouseConfigError(
                f"{ENV_PREFIX}MAX_WAIT_SECONDS={config.max_wait_seconds} is not valid: it must "
                "be at least 0"
            )
        if (
            config.query_timeout_seconds <= 0
            or config.query_max_memory_bytes < 1
            or config.query_concurrency < 1
        ):
            raise WarehouseConfigError(
                f"{ENV_PREFIX}QUERY_TIMEOUT_SECONDS, {ENV_PREFIX}QUERY_MAX_MEMORY_BYTES and "
                f"{ENV_PREFIX}QUERY_CONCURRENCY must be above 0 (0 would mean no limit)"
            )
        if config.query_dsn is not None:
            for dsn, name in ((config.query_dsn, "QUERY_DSN"), (config.dsn or "chdb:", "DSN")):
                if urlsplit(dsn).scheme.lower() not in ("http", "https"):
                    raise WarehouseConfigError(
                        f"{ENV_PREFIX}QUERY_DSN is for a ClickHouse server, with users: "
                        f"{ENV_PREFIX}{name} must be http(s)://... (an embedded chDB "
                        "warehouse has no users; its queries run in a read-only session)"
                    )
        return config

    def target(self, data_dir: Path) -> Target:
        """The resolved place to connect to; ``data_dir`` is the core's data directory."""
        dsn = self.dsn or f"chdb://{data_dir / DEFAULT_CHDB_DIR}"
        parts = urlsplit(dsn)
        scheme = parts.scheme.lower()
        if scheme == "chdb":
            # chdb://relative/dir and chdb:///absolute/dir both name a directory: everything
            # after the scheme is the path (clickhouse-connect itself would read the first
            # segment of a relative one as a host).
            raw_path = unquote(dsn[len("chdb://") :].split("?", 1)[0])
            if raw_path in ("", "memory", ":memory:"):
                raise WarehouseConfigError(
                    f"{ENV_PREFIX}DSN={dsn!r} names no directory: an in-memory chDB loses every "
                    "event at exit; use chdb:///path/to/dir"
                )
            path = Path(raw_path).expanduser().resolve()
            return Target(
                kind="chdb",
                dsn=f"chdb://{path}",
                path=path,
                database=self.database or DEFAULT_DATABASE,
                display=f"chdb://{path}",
            )
        if scheme in ("http", "https"):
            database = self.database or unquote(parts.path.strip("/")) or DEFAULT_DATABASE
            host = parts.hostname or "localhost"
            port = f":{parts.port}" if parts.port else ""
            # The server-side database may not exist yet: connect to `default`, create ours.
            connect = urlunsplit((parts.scheme, parts.netloc, "/default", parts.query, ""))
            return Target(
                kind="http",
                dsn=connect,
                path=None,
                database=database,
                # Never print the password.
                display=f"{parts.scheme}://{host}{port}/{database}",
            )
        raise WarehouseConfigError(
            f"{ENV_PREFIX}DSN={dsn!r}: unsupported scheme {parts.scheme!r}; use chdb:///path/to/dir "
            "(embedded) or http(s)://user:password@host:8123/database (a ClickHouse server)"
        )

    def reader_target(self, target: Target) -> Target:
        """Where read-only queries run: ``target`` (from `target`), or as ``query_dsn``'s user."""
        if self.query_dsn is None:
            return target
        reader = msgspec.structs.replace(self, dsn=self.query_dsn, database=target.database)
        return reader.target(Path("."))


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """A resolved warehouse location."""

    kind: Literal["chdb", "http"]
    # What clickhouse-connect is given (for http: with credentials, on the `default` database).
    dsn: str
    # The chDB directory (kind "chdb" only).
    path: Path | None
    database: str
    # Safe to print: no password.
    display: str
