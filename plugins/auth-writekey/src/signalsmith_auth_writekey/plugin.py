"""The hook implementations of the auth-writekey plugin; this module is the registered plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from signalsmith import hookimpl
from signalsmith.records import Credentials, Refusal, Secret, Source
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

    from signalsmith.runtime import Runtime

# ``authenticate`` receives only the credentials, so the store ``startup`` made has to be found
# here. A list, not one slot: a process (or a test) may run more than one runtime, and the one
# that shuts down must not take the others' store with it. The newest started store answers.
_stores: list[KeyStore] = []


def current_store() -> KeyStore:
    if not _stores:
        raise RuntimeError(
            "auth-writekey has no key store: its startup hook has not run in this process; "
            "start the runtime with signalsmith.runtime.start_runtime before serving requests"
        )
    return _stores[-1]


@hookimpl
def startup(runtime: Runtime) -> None:
    store = KeyStore.for_runtime(runtime)
    runtime.state[STATE_KEY] = store
    _stores.append(store)
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
    store = runtime.state.pop(STATE_KEY, None)
    if store in _stores:
        _stores.remove(store)


@hookimpl
async def authenticate(credentials: Credentials) -> Source | None:
    return await current_store().authenticate(credentials.write_keys)


@hookimpl
async def admit_events(source: Source, count: int) -> Refusal | None:
    if not isinstance(source, WriteKeySource):
        return None  # another authenticator's source: not ours to limit
    decision = await current_store().admit(source, count)
    return refusal_for(decision, source)


@hookimpl
async def embedded_defaults(runtime: Runtime) -> dict[str, Secret]:
    """A development write key for ``signalsmith serve``, kept in the data directory."""
    path = runtime.settings.data_path / DEV_KEY_FILE
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    key = await ensure_dev_key(runtime, path)
    return {
        "write_key": Secret(
            value=key, new=key != kept, path=str(path.absolute()), command=("keys", "list")
        )
    }


@hookimpl
def register_admin_routes(register: Callable[[Any], None]) -> None:
    from signalsmith_auth_writekey.admin_api import admin_controller

    register(admin_controller(current_store))


@hookimpl
def register_commands(cli: click.Group) -> None:
    # Imported here: the collector's request path never needs the CLI frame.
    from signalsmith_auth_writekey.cli import register_key_commands

    register_key_commands(cli)
