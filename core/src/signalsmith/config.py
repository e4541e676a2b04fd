"""Settings, read once from the environment into a frozen record.

Every knob is a ``SIGNALSMITH_*`` variable; `docs/configuration.md` lists them. Nothing reads
``os.environ`` elsewhere, so a test builds a ``Settings`` and passes it in.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

DEFAULT_DATA_DIR = ".signalsmith"
# Settings read from comma-separated lists, under names of their own (see ``from_env``).
_LIST_SETTINGS = {
    "plugins_allow": "LOAD_PLUGINS",
    "plugins_block": "BLOCK_PLUGINS",
    "plugin_modules": "PLUGIN_MODULES",
    "trusted_proxies": "TRUSTED_PROXIES",
}
# Settings written as JSON in their variable.
_JSON_SETTINGS = ("transforms",)


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
    # Seconds a client has to send a request's whole body once its headers are in: a body
    # announced and trickled, or never sent, is answered 408 and its connection closed.
    body_read_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # Seconds a client has to send a request's headers (Granian's HTTP/1 header_read_timeout),
    # which is also how long an idle keep-alive connection is kept.
    header_read_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Requests waiting for the next Redis flush beyond this are answered 503 (backpressure).
    max_pending_appends: int = 10_000
    retry_after_seconds: int = 5
    # The admin API (`/api/v1/admin`) answers only requests bearing this token.
    admin_token: str | None = None
    # Where browsers reach this collector, e.g. `https://collect.example.com`: what the settings
    # endpoint tells analytics-next. Unset: this server's own host and port, over http.
    public_url: str | None = None
    # Addresses or networks (CIDR) of the proxies whose X-Forwarded-Host and X-Forwarded-Proto
    # are believed when no public URL is set. Anyone else's forwarded headers are ignored.
    trusted_proxies: tuple[str, ...] = ()
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

    def __post_init__(self) -> None:
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"SIGNALSMITH_PUBLIC_URL must be an http(s) URL such as "
                    f"https://collect.example.com, not {self.public_url!r}"
                )
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"SIGNALSMITH_TRUSTED_PROXIES lists {proxy!r}, which is not an IP address "
                    "or network (10.0.0.5, 10.0.0.0/8, fd00::/8)"
                ) from None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def local_url(self) -> str:
        """Where a client on this machine reaches the collector (never 0.0.0.0)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

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
            if field.name in _LIST_SETTINGS or field.name in _JSON_SETTINGS:
                continue
            raw = get(field.name.upper())
            if raw is not None:
                fields[field.name] = raw
        # Datasette-style names: SIGNALSMITH_LOAD_PLUGINS allows, SIGNALSMITH_BLOCK_PLUGINS blocks.
        fields["plugins_allow"] = names("LOAD_PLUGINS")
        fields["plugins_block"] = names("BLOCK_PLUGINS") or ()
        fields["plugin_modules"] = names("PLUGIN_MODULES") or ()
        fields["trusted_proxies"] = names("TRUSTED_PROXIES") or ()
        for field_name in _JSON_SETTINGS:
            raw = get(field_name.upper())
            if raw is None:
                continue
            try:
                fields[field_name] = msgspec.json.decode(raw)
            except msgspec.DecodeError as error:
                raise msgspec.ValidationError(
                    f"SIGNALSMITH_{field_name.upper()} is not JSON: {error}"
                ) from None
        return msgspec.convert(fields, cls, strict=False)

    def to_env(self) -> dict[str, str]:
        """The ``SIGNALSMITH_*`` variables that ``from_env`` reads back as these settings.

        Only settings that differ from their defaults; how `signalsmith serve` hands the
        settings its options changed to Granian's worker processes.
        """
        env: dict[str, str] = {}
        defaults = Settings()
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if value == getattr(defaults, field.name):
                continue
            name = f"SIGNALSMITH_{_LIST_SETTINGS.get(field.name, field.name.upper())}"
            if isinstance(value, tuple):
                env[name] = ",".join(value)
            elif field.name in _JSON_SETTINGS:
                env[name] = msgspec.json.encode(value).decode()
            elif isinstance(value, bool):
                env[name] = "1" if value else "0"
            else:
                env[name] = str(value)
        return env
