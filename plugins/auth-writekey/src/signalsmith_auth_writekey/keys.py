"""The write-key store: keys kept in Redis as SHA-256 hashes, each mapped to the source it opens.

Layout, under the deployment's key prefix ``P``:

- ``P:keys:<sha256hex>``: hash, one ``KeyRecord`` per key (source, prefix, created_at, state, plan);
- ``P:sources:<name>:keys``: set of the key hashes a source owns (for listing, and for revoking
  or rotating every key of a source later);
- ``P:source-names``: set of every source name that has had a key.

``P:sources:<name>`` itself is left free for the source's own settings. The plaintext key is
returned once by ``create`` and never stored or logged; only its prefix is shown afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from signalsmith.records import Source

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from signalsmith.runtime import Runtime

log = logging.getLogger("signalsmith.auth_writekey")

# Recognisable in logs, config files and secret scanners, like Stripe's `sk_` or GitHub's `ghp_`.
KEY_PREFIX = "ss_"
# 24 random bytes: 192 bits, far beyond guessing, so one unsalted SHA-256 is a safe digest
# (salting and slow hashes are for low-entropy passwords, and would cost a request its latency).
KEY_RANDOM_BYTES = 24
# What listings and logs show: enough to tell keys apart, far too little to use one.
DISPLAY_PREFIX_LENGTH = 10
# Longer candidates cannot be ours; refusing them early keeps garbage off Redis.
MAX_KEY_LENGTH = 256

ACTIVE = "active"
DEV_SOURCE = "dev"

# Source names become parts of Redis key names, so ":" and spaces are out: a name with ":" could
# collide with another source's index key.
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class InvalidSourceName(ValueError):
    """A source name that cannot be used in key names and listings."""


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One write key as stored: everything but the key itself and its hash."""

    source: str
    # The first characters of the key, shown in listings and logs to tell keys apart.
    prefix: str
    created_at: datetime
    # Only "active" resolves. Revocation (a later issue) writes another state, which this
    # version then already refuses.
    state: str = ACTIVE
    # Copied onto each key so a lookup is one HGETALL; the plans issue will keep it in step.
    plan: str = "free"

    def to_source(self) -> Source:
        return Source(id=self.source, name=self.source, key_prefix=self.prefix, plan=self.plan)


def hash_key(plaintext: str) -> str:
    """The hex SHA-256 digest under which a key is stored."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def check_source_name(name: str) -> None:
    if not SOURCE_NAME.fullmatch(name):
        raise InvalidSourceName(
            f"invalid source name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (for example 'web' or 'ios-app')"
        )


def _text(value: bytes | str) -> str:
    # The runtime's client returns bytes; a client made with decode_responses returns str.
    return value.decode() if isinstance(value, bytes) else value


def _decode_record(raw: dict[Any, Any]) -> KeyRecord | None:
    if not raw:
        return None
    # Fields written by later versions are ignored, so an older process still reads the record.
    return msgspec.convert({_text(k): _text(v) for k, v in raw.items()}, KeyRecord, strict=False)


class KeyStore:
    """Creates, lists and resolves write keys; ``authenticate`` caches answers in process.

    The cache keeps the request path at zero Redis round trips for a key seen within ``ttl``
    seconds, and one round trip otherwise, however many keys a request offers. Its short TTL is
    what lets a revoked key stop working within about a second without any invalidation message.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        key: Callable[..., str],
        *,
        ttl: float = 1.0,
        negative_ttl: float = 0.25,
        max_cached: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.key = key
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_cached = max_cached
        self.clock = clock
        # digest -> (expires at, Source or None); keyed by digest so no plaintext is kept.
        self._cache: dict[str, tuple[float, Source | None]] = {}

    @classmethod
    def for_runtime(cls, runtime: Runtime, **options: Any) -> KeyStore:
        return cls(runtime.redis, runtime.key, **options)

    def _record_key(self, digest: str) -> str:
        return self.key("keys", digest)

    def _source_keys_key(self, source_name: str) -> str:
        return self.key("sources", source_name, "keys")

    # --- writing and listing ------------------------------------------------------------------

    async def create(self, source_name: str) -> tuple[str, KeyRecord]:
        """A new key for ``source_name``: the plaintext (show it once) and its stored record."""
        check_source_name(source_name)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
        digest = hash_key(plaintext)
        record = KeyRecord(
            source=source_name,
            prefix=plaintext[:DISPLAY_PREFIX_LENGTH],
            created_at=datetime.now(UTC),
        )
        # One MULTI, so a key is never usable without being listed (and so revocable).
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._record_key(digest), mapping=msgspec.to_builtins(record))
            pipe.sadd(self._source_keys_key(source_name), digest)
            pipe.sadd(self.key("source-names"), source_name)
            await pipe.execute()
        self._cache.pop(digest, None)
        log.info("created write key %s... for source %r", record.prefix, source_name)
        return plaintext, record

    async def list(self) -> list[KeyRecord]:
        """Every key's record, by source then age; the records hold no key and no hash."""
        names = sorted(_text(n) for n in await self.redis.smembers(self.key("source-names")))
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.smembers(self._source_keys_key(name))
        digests = [_text(d) for members in await pipe.execute() for d in members]
        records = [r for r in await self._fetch(digests) if r is not None]
        return sorted(records, key=lambda r: (r.source, r.created_at))

    # --- resolving ----------------------------------------------------------------------------

    async def _fetch(self, digests: Sequence[str]) -> list[KeyRecord | None]:
        """The records of ``digests`` in one round trip (None where there is none)."""
        if not digests:
            return []
        if len(digests) == 1:
            raws = [await self.redis.hgetall(self._record_key(digests[0]))]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for digest in digests:
                pipe.hgetall(self._record_key(digest))
            raws = await pipe.execute()
        return [_decode_record(raw) for raw in raws]

    async def lookup(self, plaintext: str) -> Source | None:
        """The source an active key opens, read from Redis now (no cache); None if unknown."""
        if not plaintext or len(plaintext) > MAX_KEY_LENGTH:
            return None
        (record,) = await self._fetch([hash_key(plaintext)])
        return record.to_source() if record is not None and record.state == ACTIVE else None

    async def authenticate(self, write_keys: Iterable[str]) -> Source | None:
        """The source of the first key in ``write_keys`` that resolves, or None.

        Answers come from the in-process cache when fresh; all other candidates are read in a
        single round trip.
        """
        now = self.clock()
        # dict.fromkeys drops repeated keys while keeping the order they should be tried in.
        digests = list(
            dict.fromkeys(hash_key(k) for k in write_keys if k and len(k) <= MAX_KEY_LENGTH)
        )
        answers: dict[str, Source | None] = {}
        missing: list[str] = []
        for digest in digests:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > now:
                answers[digest] = cached[1]
                if cached[1] is not None and not missing:
                    # An earlier candidate can no longer win: no need to ask Redis at all.
                    return cached[1]
            else:
                missing.append(digest)
        if missing:
            for digest, record in zip(missing, await self._fetch(missing), strict=True):
                source = record.to_source() if record and record.state == ACTIVE else None
                answers[digest] = source
                self._remember(digest, source, now)
        for digest in digests:
            source = answers[digest]
            if source is not None:
                return source
        return None

    def _remember(self, digest: str, source: Source | None, now: float) -> None:
        if len(self._cache) >= self.max_cached:
            # Bounded, so a client spraying random keys cannot grow the process: drop what has
            # expired, and everything if that is not enough (a cold cache costs one round trip).
            self._cache = {d: e for d, e in self._cache.items() if e[0] > now}
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
        ttl = self.ttl if source is not None else self.negative_ttl
        self._cache[digest] = (now + ttl, source)


# --- per-process wiring -----------------------------------------------------------------------

STATE_KEY = "auth-writekey.store"


def store_for(runtime: Runtime) -> KeyStore:
    """The KeyStore ``startup`` put on the runtime, or a new one if the plugin did not start."""
    store = runtime.state.get(STATE_KEY)
    return store if isinstance(store, KeyStore) else KeyStore.for_runtime(runtime)


async def ensure_dev_key(runtime: Runtime, path: str | os.PathLike[str]) -> str:
    """The development key kept in ``path``; a new one for source "dev" if it no longer resolves.

    The file is written with mode 0600, since whoever can read it can send events.
    """
    path = Path(path)
    store = store_for(runtime)
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing and await store.lookup(existing) is not None:
        return existing
    plaintext, _record = await store.create(DEV_SOURCE)
    _write_private(path, plaintext + "\n")
    return plaintext


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    # Created 0600 from the start (O_EXCL), so the key is never readable by others, not even
    # between the write and a chmod.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
