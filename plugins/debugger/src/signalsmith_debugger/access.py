"""Who may see what: the admin token sees every source; a debugger token sees the sources it
was created for, and is accepted by the debugger's own routes (``/debugger/api/...``) only.

A debugger token (``ssdbg_<id>_<secret>``) is shown once, when it is created
(``signalsmith debugger token create --source web`` or the admin API); Redis keeps only its
SHA-256, in the hash ``P:debugger:tokens``, with its name, sources and expiry. The rest of the
admin API never accepts one: its guard compares against ``SIGNALSMITH_ADMIN_TOKEN`` alone.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from signalsmith_debugger.records import NO_SOURCE
from signalsmith_debugger.store import DebuggerKeys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from signalsmith import Runtime

TOKEN_PREFIX = "ssdbg_"


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A debugger token as stored and listed (never the token itself)."""

    id: str
    name: str
    sources: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class CreatedToken(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A token just created: the only time it is shown."""

    token: str
    info: TokenInfo


class TokenNotFound(LookupError):
    pass


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(TokenInfo)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Debugger tokens in Redis, by hash."""

    def __init__(self, redis: aioredis.Redis, keys: DebuggerKeys) -> None:
        self.redis = redis
        self.key = keys.tokens

    async def create(
        self, sources: list[str], *, name: str = "", expires_in: int | None = None
    ) -> CreatedToken:
        sources = sorted({source.strip() for source in sources if source.strip()})
        if not sources:
            raise ValueError("a debugger token sees at least one source: name it with --source")
        if NO_SOURCE in sources:
            raise ValueError(
                f"{NO_SOURCE!r} (requests refused before a source was known) is for the admin "
                "token only"
            )
        token_id = secrets.token_hex(4)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(24)}"
        now = datetime.now(UTC)
        info = TokenInfo(
            id=token_id,
            name=name or f"sources {', '.join(sources)}",
            sources=tuple(sources),
            created_at=now,
            expires_at=now + timedelta(seconds=expires_in) if expires_in else None,
        )
        await self.redis.hset(self.key, token_hash(token), _encoder.encode(info))
        return CreatedToken(token=token, info=info)

    async def lookup(self, token: str) -> TokenInfo | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        raw = await self.redis.hget(self.key, token_hash(token))
        return None if raw is None else _decoder.decode(raw)

    async def listing(self) -> list[TokenInfo]:
        raw = await self.redis.hgetall(self.key)
        return sorted(
            (_decoder.decode(value) for value in raw.values()), key=lambda t: t.created_at
        )

    async def revoke(self, token_id: str) -> TokenInfo:
        """Remove the token with this id (or name); raises TokenNotFound."""
        raw = await self.redis.hgetall(self.key)
        for hashed, value in raw.items():
            info = _decoder.decode(value)
            if token_id in (info.id, info.name):
                await self.redis.hdel(self.key, hashed)
                return info
        raise TokenNotFound(
            f"no debugger token {token_id!r}; `signalsmith debugger token list` shows them"
        )


class Viewer(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking: every source (the admin token), or those of a debugger token."""

    name: str
    # None: every source, including requests refused before a source was known.
    sources: frozenset[str] | None
    token_hash: str | None = None

    def may_see(self, source: str) -> bool:
        return self.sources is None or source in self.sources

    def visible(self, sources: list[str]) -> list[str]:
        return [source for source in sources if self.may_see(source)]


def presented_token(headers: Any) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def viewer_for(token: str | None, runtime: Runtime, tokens: TokenStore) -> Viewer:
    """The viewer a request's bearer token makes it; 401 when there is none or it is unknown."""
    if token is None:
        raise NotAuthorizedException(
            "the debugger needs a token: send Authorization: Bearer <admin token or debugger "
            "token> (create a debugger token with `signalsmith debugger token create --source S`)"
        )
    admin = runtime.settings.admin_token
    # Constant time, like the admin guard: a comparison leaks nothing about a guess.
    if admin and hmac.compare_digest(token.encode(), admin.encode()):
        return Viewer(name="admin", sources=None)
    info = await tokens.lookup(token)
    if info is None:
        raise NotAuthorizedException("debugger token not recognised (revoked, or never created)")
    if info.expired(datetime.now(UTC)):
        raise NotAuthorizedException(
            f"debugger token {info.id} expired at {info.expires_at:%Y-%m-%d %H:%M}Z; create a new one"
        )
    return Viewer(name=info.name, sources=frozenset(info.sources), token_hash=token_hash(token))


def check_source(viewer: Viewer, source: str) -> None:
    if not viewer.may_see(source):
        raise PermissionDeniedException(f"this token does not see source {source!r}")
