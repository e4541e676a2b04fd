"""The admin API under ``/api/v1/admin/consent``: a user's remembered preferences, and their
erasure, as ``signalsmith consent show`` and ``forget`` do."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import delete, get
from litestar.exceptions import NotFoundException
from litestar.params import PathParameter

from signalsmith import RuntimeDependency
from signalsmith_consent.memory import Remembered
from signalsmith_consent.plugin import memory_of

User = Annotated[str, PathParameter(description="a userId or an anonymousId")]


class RememberedConsent(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /consent/{user}``: the user's record first, then those of linked identities."""

    user: str
    records: list[Remembered]


class Forgotten(msgspec.Struct, frozen=True, kw_only=True):
    """``DELETE /consent/{user}``: the identities whose records were erased."""

    user: str
    erased: list[str]


@get("/consent/{user:str}")
async def show_consent(runtime: RuntimeDependency, user: User) -> RememberedConsent:
    """What is remembered for ``user`` (a userId or an anonymousId); 404 when nothing is."""
    records = await memory_of(runtime).show(user)
    if not records:
        raise NotFoundException(detail=f"nothing is remembered for {user!r}")
    return RememberedConsent(user=user, records=records)


@delete("/consent/{user:str}", status_code=200)
async def forget_consent(runtime: RuntimeDependency, user: User) -> Forgotten:
    """Erase ``user``'s record and those of every identity linked to it."""
    return Forgotten(user=user, erased=await memory_of(runtime).forget(user))


def routes() -> list[Any]:
    return [show_consent, forget_consent]
