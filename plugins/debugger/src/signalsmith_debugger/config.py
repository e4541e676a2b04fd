"""The debugger's settings: ``SIGNALSMITH_DEBUGGER_*``, read once per process into a frozen record.

The core's ``Settings`` holds what every process shares; these belong to this plugin alone
(`docs/configuration.md` and the plugin README list them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

ENV_PREFIX = "SIGNALSMITH_DEBUGGER_"

# Traces live in slices of time; a slice also closes early once it holds this share of the cap,
# so the cap evicts at most about 1/16 of what is kept at a time.
SLICES_PER_CAP = 16
# A retention window is cut into about this many time slices (one hour each for 7 days).
SLICES_PER_RETENTION = 168


class DebuggerConfigError(ValueError):
    """A ``SIGNALSMITH_DEBUGGER_*`` setting that cannot be used; the message names the fix."""


class DebuggerConfig(msgspec.Struct, frozen=True, kw_only=True):
    # How long a trace (`signalsmith trace ID`) is kept, at least, unless the memory cap below
    # evicts it first (oldest first).
    trace_seconds: int = 7 * 86400
    # Most Redis memory the traces may take, in bytes (accounted as written; see the README for
    # the bytes one event takes).
    trace_max_bytes: int = 256 * 1024 * 1024
    # How long the live streams keep records, and most entries each source's stream keeps (an
    # entry lists about `live_records_per_entry` outcomes).
    live_seconds: int = 600
    live_max_entries: int = 1000
    live_records_per_entry: int = 100
    # Largest event or message JSON kept per record; larger ones are shortened (long strings
    # cut, long lists and objects abridged), and marked so.
    payload_bytes: int = 8192
    # How often each process writes what it observed (one Redis pipeline per flush).
    flush_seconds: float = 0.1
    # Outcomes a process holds for its next flush; past it, new ones are counted and not kept,
    # so a slow Redis never grows a collector's memory or slows its requests.
    queue_max_outcomes: int = 20_000
    # Records held for one live viewer who is not reading; past it, records are skipped for that
    # viewer, and the viewer is told how many.
    viewer_buffer: int = 2000
    # Live viewers one process serves at once; more are answered 503.
    max_viewers: int = 16
    # How often the janitor checks the memory cap and trims the live streams (any one process
    # does it at a time).
    janitor_seconds: float = 5.0

    @property
    def slice_seconds(self) -> int:
        """The length of a trace time slice: retention / 168, between 1 s and 1 h."""
        return max(1, min(3600, self.trace_seconds // SLICES_PER_RETENTION))

    @property
    def slice_max_bytes(self) -> int:
        return max(1, self.trace_max_bytes // SLICES_PER_CAP)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DebuggerConfig:
        env = os.environ if environ is None else environ
        fields: dict[str, str] = {}
        for field in msgspec.structs.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw not in (None, ""):
                fields[field.name] = raw
        try:
            config = msgspec.convert(fields, cls, strict=False)
        except msgspec.ValidationError as error:
            reason, _, where = str(error).partition(" - at `$.")
            name = ENV_PREFIX + where.rstrip("`").upper() if where else f"{ENV_PREFIX}*"
            raise DebuggerConfigError(
                f"{name}={env.get(name, '')!r} is not valid: {reason}"
            ) from error
        for field in msgspec.structs.fields(cls):
            value = getattr(config, field.name)
            if value <= 0:
                raise DebuggerConfigError(
                    f"{ENV_PREFIX}{field.name.upper()}={value} is not valid: it must be above 0"
                )
        if config.payload_bytes < 256:
            raise DebuggerConfigError(
                f"{ENV_PREFIX}PAYLOAD_BYTES={config.payload_bytes} is not valid: at least 256"
            )
        return config
