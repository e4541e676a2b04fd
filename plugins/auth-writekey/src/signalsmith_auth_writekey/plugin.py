"""The hook implementations of the auth-writekey plugin; this module is the registered plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from signalsmith import hookimpl
from signalsmith.records import Credentials, Source
from signalsmith_auth_writekey.keys import (
    STATE_KEY,
    InvalidSourceName,
    KeyStore,
    check_source_name,
    ensure_dev_key,
    store_for,
)

# The file under the data directory that keeps the development key across restarts.
DEV_KEY_FILE = "dev-write-key"

if TYPE_CHECKING:
    import click

    from signalsmith.runtime import Runtime

# ``authenticate`` receives only the credentials, so the store ``startup`` made has to be found
# here. A list, not one slot: a process (or a test) may run more than one runtime, and the one
# that shuts down must not take the others' store with it. The newest started store answers.
_stores: list[KeyStore] = []


@hookimpl
def startup(runtime: Runtime) -> None:
    store = KeyStore.for_runtime(runtime)
    runtime.state[STATE_KEY] = store
    _stores.append(store)


@hookimpl
def shutdown(runtime: Runtime) -> None:
    store = runtime.state.pop(STATE_KEY, None)
    if store in _stores:
        _stores.remove(store)


@hookimpl
async def authenticate(credentials: Credentials) -> Source | None:
    if not _stores:
        raise RuntimeError(
            "auth-writekey has no key store: its startup hook has not run in this process; "
            "start the runtime with signalsmith.runtime.start_runtime before serving requests"
        )
    return await _stores[-1].authenticate(credentials.write_keys)


@hookimpl
async def embedded_defaults(runtime: Runtime) -> dict[str, str]:
    """A development write key for ``signalsmith serve``, kept in the data directory."""
    key = await ensure_dev_key(runtime, runtime.settings.data_path / DEV_KEY_FILE)
    return {"write_key": key}


@hookimpl
def register_commands(cli: click.Group) -> None:
    # Imported here: the collector's request path never needs the CLI frame.
    import click

    from signalsmith.cli import print_table, run_with_runtime, settings_of

    @cli.group()
    def keys() -> None:
        """Create and list write keys (only their prefixes are ever shown again)."""

    @keys.command("create")
    @click.option("--source", "source_name", required=True, help="The source the key opens.")
    @click.pass_context
    def create(ctx: click.Context, source_name: str) -> None:
        """Create a write key for a source and print it, once."""

        # Checked before connecting, so a typo does not start an embedded Redis first.
        try:
            check_source_name(source_name)
        except InvalidSourceName as error:
            raise click.BadParameter(str(error), param_hint="--source") from error

        async def action(runtime: Runtime) -> str:
            plaintext, _record = await store_for(runtime).create(source_name)
            return plaintext

        plaintext = run_with_runtime(settings_of(ctx), action)
        click.echo(f"Created a write key for source {source_name!r}:\n")
        click.echo(f"    {plaintext}\n")
        click.echo(
            "Copy it now: it cannot be shown again (only its SHA-256 hash is stored). "
            "If it is lost, create another with `signalsmith keys create`."
        )

    @keys.command("list")
    @click.pass_context
    def list_keys(ctx: click.Context) -> None:
        """List write keys by source, prefix and creation time (never the keys themselves)."""

        async def action(runtime: Runtime) -> list[dict[str, str]]:
            return [
                {
                    "source": record.source,
                    "prefix": f"{record.prefix}...",
                    "created": record.created_at.isoformat(timespec="seconds"),
                }
                for record in await store_for(runtime).list()
            ]

        rows = run_with_runtime(settings_of(ctx), action)
        if not rows:
            click.echo(
                "No write keys yet; create one with `signalsmith keys create --source NAME`."
            )
            return
        print_table(rows, ["source", "prefix", "created"])
