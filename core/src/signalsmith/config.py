"""Settings, read once from the environment into a frozen record.

Every knob is a ``SIGNALSMITH_*`` variable; `docs/configuration.md` lists them. Nothing reads
``os.environ`` elsewhere, so a test builds a ``Settings`` and passes it in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

DEFAULT_DATA_DIR = ".signalsmith"


class TransformDeclaration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One configured transform instance: the type it is made from and that type's settings."""

    type: str
    settings: dict[str, Any] = {}


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Redis: None means "start the embedded server under data_dir" (signalsmith serve only).
    redis_url: str | None = None
    data_dir: str = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    port: int = 8000
    http_workers: int = 1
    # Every Redis key SignalSmith writes starts with this, so tests and tenants can share a server.
    key_prefix: str = "signalsmith"
    # 503 once the stream holds this many unprocessed entries (one entry per request).
    backlog_max_entries: int = 1_000_000
    # Ids are kept in buckets of half this (docs/buffer.md): at least a second.
    dedupe_ttl_seconds: Annotated[int, msgspec.Meta(ge=1)] = 24 * 3600
    max_message_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    max_batch_messages: int = 2500
    # Requests waiting for the next Redis flush beyond this are answered 503 (backpressure).
    max_pending_appends: int = 10_000
    retry_after_seconds: int = 5
    # The admin API (`/api/v1/admin`) answers only requests bearing this token.
    admin_token: str | None = None
    # Plugin selection: None allows every installed plugin.
    plugins_allow: tuple[str, ...] | None = None
    plugins_block: tuple[str, ...] = ()
    # Extra plugin modules by import path (local plugins not installed as distributions).
    plugin_modules: tuple[str, ...] = ()
    # Log every hook call through pluggy's tracing (SIGNALSMITH_TRACE_HOOKS=1).
    trace_hooks: bool = False
    # Transform instances a source can list, by name: a JSON object
    # {"name": {"type": "<registered type>", "settings": {...}}} (SIGNALSMITH_TRANSFORMS).
    transforms: dict[str, TransformDeclaration] = {}
    # Run the worker inside the collector process (the embedded `serve`): one process then
    # holds everything, including an embedded warehouse that only one process may open.
    embedded_worker: bool = False
    # Worker tuning.
    worker_block_ms: int = 1000
    worker_claim_idle_ms: int = 30_000
    worker_retry_base_seconds: float = 0.5
    worker_retry_max_seconds: float = 30.0
    # A failing event is retried for this long after it was received (or replayed), then
    # dead-lettered; a sink (a workspace destination's `retry_window_seconds`) may say otherwise.
    worker_retry_window_seconds: Annotated[float, msgspec.Meta(gt=0)] = 4 * 3600.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"SIGNALSMITH_{name}")
            return value if value not in (None, "") else None

        def names(name: str) -> tuple[str, ...] | None:
            value = get(name)
            if value is None:
                return None
            return tuple(part.strip() for part in value.split(",") if part.strip())

        fields: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            if field.name in ("plugins_allow", "plugins_block", "plugin_modules", "transforms"):
                continue
            raw = get(field.name.upper())
            if raw is not None:
                fields[field.name] = raw
        # Datasette-style names: SIGNALSMITH_LOAD_PLUGINS allows, SIGNALSMITH_BLOCK_PLUGINS blocks.
        fields["plugins_allow"] = names("LOAD_PLUGINS")
        fields["plugins_block"] = names("BLOCK_PLUGINS") or ()
        fields["plugin_modules"] = names("PLUGIN_MODULES") or ()
        transforms = get("TRANSFORMS")
        if transforms is not None:
            try:
                fields["transforms"] = msgspec.json.decode(transforms)
            except msgspec.DecodeError as error:
                raise msgspec.ValidationError(
                    f"SIGNALSMITH_TRANSFORMS is not JSON: {error}"
                ) from None
        return msgspec.convert(fields, cls, strict=False)
