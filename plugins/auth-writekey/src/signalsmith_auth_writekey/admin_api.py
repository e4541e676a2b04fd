"""The write-key endpoints of the admin API, under ``/api/v1/admin/keys``.

Registered through ``register_admin_routes``, so every one sits behind the core's admin-token
guard. Requests and answers are msgspec Structs, which is what Litestar's OpenAPI schema
(``/schema/openapi.json``) describes. A key is identified by the prefix listings show.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, post, put
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
)
from litestar.params import Body, Parameter

from signalsmith import RuntimeDependency
from signalsmith_auth_writekey.keys import (
    DEFAULT_GRACE_SECONDS,
    DISPLAY_PREFIX_LENGTH,
    STATE_KEY,
    InvalidSourceName,
    KeyConflict,
    KeyInfo,
    KeyNotFound,
    KeyStore,
)
from signalsmith_auth_writekey.plans import DEFAULT_PLAN, InvalidPlan

PlanName = Literal["free", "pro", "enterprise"]
EventsPerSecond = Annotated[
    int, msgspec.Meta(ge=1, description="Events per second (enterprise plan only).")
]
BurstEvents = Annotated[
    int, msgspec.Meta(ge=1, description="Events accepted at once (enterprise plan only).")
]
# A year: longer is a key that is never really rotated.
MAX_GRACE_SECONDS = 365 * 24 * 3600


class CreateKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new write key for a source."""

    source: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
            description="The source the key opens, for example 'web' or 'ios-app'.",
        ),
    ]
    plan: PlanName = DEFAULT_PLAN
    rate: EventsPerSecond | None = None
    burst: BurstEvents | None = None


class CreatedKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key as created: ``key`` is shown this once and cannot be read back."""

    key: str
    info: KeyInfo


class RotateKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long the old key keeps working after the new one is made."""

    grace_seconds: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=MAX_GRACE_SECONDS,
            description="Seconds the old key is still accepted; 0 refuses it at once.",
        ),
    ] = DEFAULT_GRACE_SECONDS


class RotatedKey(msgspec.Struct, frozen=True, kw_only=True):
    """The new key (shown this once) and the old key, now expiring."""

    key: str
    info: KeyInfo
    previous: KeyInfo


class SetPlan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A key's new plan; rate and burst are for the enterprise plan, and required there."""

    plan: PlanName
    rate: EventsPerSecond | None = None
    burst: BurstEvents | None = None


class KeyConflictException(HTTPException):
    """409: the key's state does not allow the change (revoked, already rotated)."""

    status_code = 409


@contextlib.contextmanager
def _as_http_errors() -> Iterator[None]:
    """The store's errors as the admin API's answers (the core renders them as code/message)."""
    try:
        yield
    except KeyNotFound as error:
        raise NotFoundException(str(error)) from error
    except KeyConflict as error:
        raise KeyConflictException(str(error)) from error
    except (InvalidPlan, InvalidSourceName, ValueError) as error:
        raise ClientException(str(error)) from error


def _prefix(reference: str) -> str:
    """The prefix a path names; a whole key is refused (URLs end up in proxy and access logs)."""
    prefix = reference.strip().removesuffix("...")
    if len(prefix) > DISPLAY_PREFIX_LENGTH:
        raise ClientException(
            f"name the key by its {DISPLAY_PREFIX_LENGTH}-character prefix as listings show it, "
            "never by the key itself: URLs end up in logs. If a key was sent in a URL, rotate it."
        )
    return prefix


KeyPrefix = Annotated[
    str,
    Parameter(description="The key's prefix as listings show it, for example ss_AbCdEfG."),
]
# Documented in the OpenAPI schema; 401 comes from the core's admin-token guard.
ERRORS = [ClientException, NotAuthorizedException, NotFoundException]


def _store(runtime: RuntimeDependency) -> KeyStore:
    """The KeyStore this plugin's ``startup`` attached to the process's runtime."""
    return runtime.attached(STATE_KEY, KeyStore)


def admin_controller() -> type[Controller]:
    """The ``/keys`` controller; each handler finds the process's KeyStore on its runtime."""

    class WriteKeys(Controller):
        path = "/keys"
        tags = ["write keys"]

        @get("/", raises=ERRORS)
        async def list_keys(
            self,
            runtime: RuntimeDependency,
            source: Annotated[str | None, Parameter(description="Only this source's keys.")] = None,
        ) -> list[KeyInfo]:
            """Every write key (or one source's): prefix, source, plan, limits, state, times."""
            return await _store(runtime).infos(source)

        @post("/", status_code=201, raises=ERRORS)
        async def create_key(
            self, runtime: RuntimeDependency, data: Annotated[CreateKey, Body()]
        ) -> CreatedKey:
            """Create a write key. The answer holds the key itself, this once only."""
            with _as_http_errors():
                plaintext, record = await _store(runtime).create(
                    data.source, plan=data.plan, rate=data.rate, burst=data.burst
                )
            return CreatedKey(key=plaintext, info=KeyInfo.of(record))

        @get("/{prefix:str}", raises=ERRORS)
        async def show_key(self, runtime: RuntimeDependency, prefix: KeyPrefix) -> KeyInfo:
            """One write key, by its prefix."""
            with _as_http_errors():
                return await _store(runtime).info(_prefix(prefix))

        @post("/{prefix:str}/revoke", status_code=200, raises=[*ERRORS, KeyConflictException])
        async def revoke_key(self, runtime: RuntimeDependency, prefix: KeyPrefix) -> KeyInfo:
            """Revoke a key: every collector refuses it within a second. Idempotent."""
            with _as_http_errors():
                return KeyInfo.of(await _store(runtime).revoke(_prefix(prefix)))

        @post("/{prefix:str}/rotate", status_code=201, raises=[*ERRORS, KeyConflictException])
        async def rotate_key(
            self,
            runtime: RuntimeDependency,
            prefix: KeyPrefix,
            data: Annotated[RotateKey | None, Body()] = None,
        ) -> RotatedKey:
            """Make a new key for the same source and plan; the old one works for the grace."""
            grace = (data or RotateKey()).grace_seconds
            with _as_http_errors():
                plaintext, new, old = await _store(runtime).rotate(_prefix(prefix), grace)
            return RotatedKey(key=plaintext, info=KeyInfo.of(new), previous=KeyInfo.of(old))

        @put("/{prefix:str}/plan", raises=[*ERRORS, KeyConflictException])
        async def set_key_plan(
            self, runtime: RuntimeDependency, prefix: KeyPrefix, data: Annotated[SetPlan, Body()]
        ) -> KeyInfo:
            """Move a key to another plan; its new limits apply to its next request."""
            with _as_http_errors():
                return KeyInfo.of(
                    await _store(runtime).set_plan(
                        _prefix(prefix), data.plan, rate=data.rate, burst=data.burst
                    )
                )

    return WriteKeys
