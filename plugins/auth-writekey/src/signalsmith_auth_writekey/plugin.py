"""The hook implementations of the auth-writekey plugin; this module is the registered plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from signalsmith import BannerSecret, Credentials, Refusal, Source, hookimpl
from signalsmith_auth_writekey.invalidation import InvalidationListener
from signalsmith_auth_writekey.keys import (
    STATE_KEY,
    KeyStore,
    WriteKeySource,
    ensure_dev_key,
)
from signalsmith_auth_writekey.limits import refusal_for

# The file under the data directory that keeps the development key across restarts.
DEV_KEY_FILE = "dev-write-key"
LISTENER_KEY = "auth-writekey.invalidations"

if TYPE_CHECKING:
    import click

    from signalsmith import Runtime


def _store(runtime: Runtime) -> KeyStore:
    return runtime.attached(STATE_KEY, KeyStore)


@hookimpl
def startup(runtime: Runtime) -> None:
    store = KeyStore.for_runtime(runtime)
    runtime.state[STATE_KEY] = store
    if runtime.role in ("collector", "embedded"):
        # Only processes that answer requests cache keys; a CLI command reads Redis each time.
        listener = InvalidationListener(store)
        listener.start()
        runtime.state[LISTENER_KEY] = listener


@hookimpl
async def shutdown(runtime: Runtime) -> None:
    listener = runtime.state.pop(LISTENER_KEY, None)
    if isinstance(listener, InvalidationListener):
        await listener.stop()
    runtime.state.pop(STATE_KEY, None)


@hookimpl
async def authenticate(credentials: Credentials, runtime: Runtime) -> Source | None:
    return await _store(runtime).authenticate(credentials.write_keys)


@hookimpl
async def admit_events(source: Source, count: int, runtime: Runtime) -> Refusal | None:
    if not isinstance(source, WriteKeySource):
        return None  # another authenticator's source: not ours to limit
    decision = await _store(runtime).admit(source, count)
    return refusal_for(decision, source)


@hookimpl
async def embedded_defaults(runtime: Runtime) -> dict[str, BannerSecret]:
    """A development write key for ``signalsmith serve``, kept in the data directory."""
    path = runtime.settings.data_path / DEV_KEY_FILE
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    key = await ensure_dev_key(runtime, path)
    return {
        "write_key": BannerSecret(
            value=key, new=key != kept, path=str(path.absolute()), command=("keys", "list")
        )
    }


@hookimpl
def register_admin_routes(register: Callable[[Any], None]) -> None:
    from signalsmith_auth_writekey.admin_api import admin_controller

    register(admin_controller())


@hookimpl
def register_commands(cli: click.Group) -> None:
    # Imported here: the collector's request path never needs the CLI frame.
    from signalsmith_auth_writekey.cli import register_key_commands

    register_key_commands(cli)
