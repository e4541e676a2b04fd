"""The write-key store: keys kept in Redis as SHA-256 hashes, each mapped to the source it opens.

Layout, under the deployment's key prefix ``P``:

- ``P:keys:<sha256hex>``: hash, one ``KeyRecord`` per key (source, prefix, plan, rate, burst,
  state, times), plus ``tat``, the rate limiter's state (`limits.py`);
- ``P:sources:<name>:keys``: set of the key hashes a source owns;
- ``P:source-names``: set of every source name that has had a key;
- ``P:key-prefixes``: hash, each key's display prefix -> its hash, so an operator can name a
  key by the prefix a listing shows (and prefixes stay unique);
- channel ``P:keys:changes``: the hash of every key that was created, revoked, rotated or
  re-planned, so each collector drops it from its cache at once.

``P:sources:<name>`` itself is left free for the source's own settings. The plaintext key is
returned once by ``create`` (and ``rotate``) and never stored or logged; only its prefix is
shown afterwards.
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
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from signalsmith import Source
from signalsmith_auth_writekey.limits import Decision, RateLimiter
from signalsmith_auth_writekey.plans import DEFAULT_PLAN, FREE, PLANS, Limits, limits_for

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from signalsmith import Runtime

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
REVOKED = "revoked"
DEV_SOURCE = "dev"
# How long a rotated key keeps working unless told otherwise: a day to roll the new key out.
DEFAULT_GRACE_SECONDS = 24 * 3600

# Source names become parts of Redis key names, so ":" and spaces are out: a name with ":" could
# collide with another source's index key.
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

KeyState = Literal["active", "expiring", "expired", "revoked"]


class InvalidSourceName(ValueError):
    """A source name that cannot be used in key names and listings."""


class KeyNotFound(LookupError):
    """No key has the prefix (or is the key) an operator named."""


class KeyConflict(RuntimeError):
    """The key is in a state that does not allow the change (revoked, already rotated)."""


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One write key as stored: everything but the key itself and its hash."""

    source: str
    # The first characters of the key, shown in listings and logs to tell keys apart.
    prefix: str
    created_at: datetime
    # "active" or "revoked"; a rotated key stays "active" until ``expires_at``.
    state: str = ACTIVE
    plan: str = DEFAULT_PLAN
    # Events per second and burst. Records written by version 0.1 have neither: free limits.
    rate: int | None = None
    burst: int | None = None
    # Epoch seconds (the rate-limit script compares it with Redis TIME): set by a rotation,
    # after which the key is refused.
    expires_at: float | None = None
    revoked_at: datetime | None = None
    # The prefix of the key a rotation made to replace this one, and the reverse.
    replaced_by: str | None = None
    replaces: str | None = None
    # Epoch seconds of the last request, written by the rate-limit script (to the second).
    last_used: int | None = None

    @property
    def limits(self) -> Limits:
        return Limits(
            plan=self.plan,
            rate=self.rate if self.rate is not None else FREE.rate or 0,
            burst=self.burst if self.burst is not None else FREE.burst or 0,
        )

    def state_at(self, now: float) -> KeyState:
        """The key's state at epoch seconds ``now``, telling a rotated key's grace apart."""
        if self.state != ACTIVE:
            return "revoked"
        if self.expires_at is None:
            return "active"
        return "expiring" if now < self.expires_at else "expired"

    def accepts(self, now: float) -> bool:
        return self.state_at(now) in ("active", "expiring")

    def to_source(self, digest: str) -> WriteKeySource:
        return WriteKeySource(
            id=self.source,
            name=self.source,
            key_prefix=self.prefix,
            plan=self.plan,
            key_hash=digest,
        )


class WriteKeySource(Source, frozen=True, kw_only=True):
    """The Source a write key opens, carrying the key's hash so ``admit_events`` finds its record.

    The hash names the key's record in Redis; it is not the key and cannot be used as one.
    """

    key_hash: str = ""

    def __repr__(self) -> str:
        # Kept out of reprs (and so out of logs and tracebacks) like every other key detail.
        return (
            f"WriteKeySource(id={self.id!r}, name={self.name!r}, "
            f"key_prefix={self.key_prefix!r}, plan={self.plan!r})"
        )


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A key as listings and the admin API show it: never the key, never its hash."""

    prefix: str
    source: str
    plan: str
    rate: int
    burst: int
    state: KeyState
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None

    @classmethod
    def of(cls, record: KeyRecord, now: float | None = None) -> KeyInfo:
        limits = record.limits
        return cls(
            prefix=record.prefix,
            source=record.source,
            plan=record.plan,
            rate=limits.rate,
            burst=limits.burst,
            state=record.state_at(time.time() if now is None else now),
            created_at=record.created_at,
            last_used_at=_from_epoch(record.last_used),
            expires_at=_from_epoch(record.expires_at),
            revoked_at=record.revoked_at,
            replaced_by=record.replaced_by,
            replaces=record.replaces,
        )


def _from_epoch(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


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
    # Fields written by later versions (and the limiter's `tat`) are ignored, so an older
    # process still reads the record.
    return msgspec.convert({_text(k): _text(v) for k, v in raw.items()}, KeyRecord, strict=False)


def _encode_record(record: KeyRecord) -> dict[str, Any]:
    # Redis hashes cannot hold None: an unset field is an absent one.
    return {k: v for k, v in msgspec.to_builtins(record).items() if v is not None}


def _display_prefix(reference: str) -> str:
    """A prefix as an operator may type it: with or without the "..." listings append."""
    return reference.strip().removesuffix("...").removesuffix("…")


# Changes a key's fields only while it is active (and, for a rotation, not yet rotated), so
# concurrent revokes and rotations cannot undo each other. One key only: fine on Redis Cluster.
# KEYS[1]: record; ARGV[1]: "active" or "unrotated"; ARGV[2]: a field to delete, or "";
# ARGV[3..]: field, value, ...
# Returns 1 when changed, 0 when there is no such key, -1 when revoked, -2 when already rotated.
UPDATE_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
if state ~= 'active' then return -1 end
if ARGV[1] == 'unrotated' and redis.call('HEXISTS', KEYS[1], 'replaced_by') == 1 then
  return -2
end
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[1], ARGV[2]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""


class _Cached(msgspec.Struct, frozen=True):
    # time.monotonic() after which the entry is stale
    deadline: float
    source: WriteKeySource | None
    # Epoch seconds after which a rotated key is refused, or None.
    key_expires_at: float | None = None


class KeyStore:
    """Creates, lists, changes and resolves write keys; ``authenticate`` caches answers.

    While this process follows the ``P:keys:changes`` channel (``subscribed``, set by the
    invalidation listener), a key's answer is cached for ``ttl`` seconds and dropped as soon as
    the key changes anywhere. Otherwise it is cached for ``unsubscribed_ttl`` seconds, so a change
    is still seen within about a second. Unknown keys are cached for ``negative_ttl``.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        key: Callable[..., str],
        *,
        ttl: float = 60.0,
        unsubscribed_ttl: float = 1.0,
        negative_ttl: float = 0.25,
        max_cached: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.key = key
        self.ttl = ttl
        self.unsubscribed_ttl = unsubscribed_ttl
        self.negative_ttl = negative_ttl
        self.max_cached = max_cached
        self.clock = clock
        # Set by the invalidation listener while it is subscribed to the changes channel.
        self.subscribed = False
        # digest -> answer; keyed by digest so no plaintext is kept.
        self._cache: dict[str, _Cached] = {}
        # Bumped on every invalidation: an answer read from Redis before an invalidation that
        # arrived while it was in flight is not cached.
        self._generation = 0
        self.limiter = RateLimiter(redis, self._record_key)
        self._update = redis.register_script(UPDATE_SCRIPT)

    @classmethod
    def for_runtime(cls, runtime: Runtime, **options: Any) -> KeyStore:
        return cls(runtime.redis, runtime.key, **options)

    @property
    def changes_channel(self) -> str:
        return self.key("keys", "changes")

    def _record_key(self, digest: str) -> str:
        return self.key("keys", digest)

    def _source_keys_key(self, source_name: str) -> str:
        return self.key("sources", source_name, "keys")

    def _prefix_index_key(self) -> str:
        return self.key("key-prefixes")

    # --- creating ----------------------------------------------------------------------------

    async def create(
        self,
        source_name: str,
        *,
        plan: str = DEFAULT_PLAN,
        rate: int | None = None,
        burst: int | None = None,
        replaces: str | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key for ``source_name``: the plaintext (show it once) and its stored record.

        Raises ``InvalidSourceName`` or ``plans.InvalidPlan`` before writing anything.
        """
        check_source_name(source_name)
        limits = limits_for(plan, rate, burst)
        plaintext, digest = await self._new_key()
        record = KeyRecord(
            source=source_name,
            prefix=plaintext[:DISPLAY_PREFIX_LENGTH],
            created_at=datetime.now(UTC),
            plan=limits.plan,
            rate=limits.rate,
            burst=limits.burst,
            replaces=replaces,
        )
        # One MULTI, so a key is never usable without being listed (and so revocable).
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._record_key(digest), mapping=_encode_record(record))
            pipe.sadd(self._source_keys_key(source_name), digest)
            pipe.sadd(self.key("source-names"), source_name)
            # A process that was asked for this key a moment ago remembers "unknown".
            pipe.publish(self.changes_channel, digest)
            await pipe.execute()
        self.forget(digest)
        log.info(
            "created write key %s... for source %r (plan %s)", record.prefix, source_name, plan
        )
        return plaintext, record

    async def _new_key(self) -> tuple[str, str]:
        """A fresh key and its hash, with a display prefix no other key has."""
        while True:
            plaintext = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
            digest = hash_key(plaintext)
            # 42 random bits in the prefix make a clash rare, never impossible: claim it first.
            if await self.redis.hsetnx(
                self._prefix_index_key(), plaintext[:DISPLAY_PREFIX_LENGTH], digest
            ):
                return plaintext, digest

    # --- listing and finding -----------------------------------------------------------------

    async def list(self, source_name: str | None = None) -> list[KeyRecord]:
        """Every key's record (or one source's), by source then age; no key and no hash."""
        return [record for _digest, record in await self._records(source_name)]

    async def infos(self, source_name: str | None = None) -> list[KeyInfo]:
        now = time.time()
        return [KeyInfo.of(record, now) for record in await self.list(source_name)]

    async def _records(self, source_name: str | None = None) -> list[tuple[str, KeyRecord]]:
        if source_name is not None:
            names = [source_name]
        else:
            names = sorted(_text(n) for n in await self.redis.smembers(self.key("source-names")))
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.smembers(self._source_keys_key(name))
        digests = [_text(d) for members in await pipe.execute() for d in members]
        found = [
            (digest, record)
            for digest, record in zip(digests, await self._fetch(digests), strict=True)
            if record is not None
        ]
        return sorted(found, key=lambda pair: (pair[1].source, pair[1].created_at))

    async def find(self, reference: str) -> tuple[str, KeyRecord]:
        """The hash and record of the key named by its listed prefix (or by the whole key).

        Raises ``KeyNotFound`` naming how to list the keys.
        """
        reference = reference.strip()
        if len(reference) > DISPLAY_PREFIX_LENGTH + 3 and reference.startswith(KEY_PREFIX):
            digest: str | None = hash_key(reference)
            shown = reference[:DISPLAY_PREFIX_LENGTH]
        else:
            shown = _display_prefix(reference)
            raw = await self.redis.hget(self._prefix_index_key(), shown)
            digest = _text(raw) if raw is not None else None
            if digest is None:
                # Keys made by version 0.1 are not in the prefix index: look through the listing.
                matches = [d for d, r in await self._records() if r.prefix == shown]
                digest = matches[0] if len(matches) == 1 else None
        if digest is not None:
            (record,) = await self._fetch([digest])
            if record is not None:
                return digest, record
        raise KeyNotFound(
            f"no write key {shown}...; list the keys and their prefixes with "
            f"`signalsmith keys list` (or GET /api/v1/admin/keys)"
        )

    async def info(self, reference: str) -> KeyInfo:
        _digest, record = await self.find(reference)
        return KeyInfo.of(record)

    # --- changing ----------------------------------------------------------------------------

    async def revoke(self, reference: str) -> KeyRecord:
        """Refuse the key from now on, on every collector. Revoking a revoked key changes nothing."""
        digest, record = await self.find(reference)
        changed = await self._change(
            digest, "active", state=REVOKED, revoked_at=datetime.now(UTC).isoformat()
        )
        if changed == -1:
            return record
        self._check_changed(changed, record)
        log.info("revoked write key %s... of source %r", record.prefix, record.source)
        return await self._reread(digest)

    async def rotate(
        self, reference: str, grace_seconds: float = DEFAULT_GRACE_SECONDS
    ) -> tuple[str, KeyRecord, KeyRecord]:
        """A new key for the same source and limits; the old one works ``grace_seconds`` more.

        Returns the new key's plaintext (show it once), its record and the old key's record.
        """
        if grace_seconds < 0:
            raise ValueError(f"a grace period is 0 seconds or more, not {grace_seconds}")
        digest, old = await self.find(reference)
        if old.state_at(time.time()) != "active":
            raise KeyConflict(self._conflict(old, "rotate"))
        limits = old.limits
        # Only a plan without fixed limits (enterprise) takes the key's own rate and burst.
        own = PLANS[limits.plan].rate is None if limits.plan in PLANS else False
        plaintext, new = await self.create(
            old.source,
            plan=limits.plan,
            rate=limits.rate if own else None,
            burst=limits.burst if own else None,
            replaces=old.prefix,
        )
        # Redis's clock: the rate-limit script compares the deadline with Redis TIME.
        seconds, microseconds = await self.redis.time()
        expires_at = seconds + microseconds / 1_000_000 + grace_seconds
        changed = await self._change(
            digest, "unrotated", expires_at=repr(expires_at), replaced_by=new.prefix
        )
        if changed != 1:
            # Someone revoked or rotated the old key meanwhile: take back the key we made.
            await self._discard(hash_key(plaintext), new)
            self._check_changed(changed, old)
        log.info(
            "rotated write key %s... of source %r to %s... (old key accepted for %s s more)",
            old.prefix,
            old.source,
            new.prefix,
            grace_seconds,
        )
        return plaintext, new, await self._reread(digest)

    async def set_plan(
        self, reference: str, plan: str, *, rate: int | None = None, burst: int | None = None
    ) -> KeyRecord:
        """Move the key to ``plan`` (enterprise: with its own rate and burst), at once."""
        limits = limits_for(plan, rate, burst)
        digest, record = await self.find(reference)
        if not record.accepts(time.time()):
            raise KeyConflict(self._conflict(record, "change the plan of"))
        # The limiter's state is dropped with the old plan: measured against the new rate, the
        # old plan's debt would mean something else (a key just upgraded from free would get
        # nothing for 5 s). So the key starts its new plan with a full burst.
        changed = await self._change(
            digest,
            "active",
            delete="tat",
            plan=limits.plan,
            rate=limits.rate,
            burst=limits.burst,
        )
        self._check_changed(changed, record)
        log.info(
            "write key %s... of source %r is now on plan %s (%d events/s, bursts of %d)",
            record.prefix,
            record.source,
            limits.plan,
            limits.rate,
            limits.burst,
        )
        return await self._reread(digest)

    async def _change(self, digest: str, condition: str, *, delete: str = "", **fields: Any) -> int:
        """Set ``fields`` on an active key and tell every collector; see UPDATE_SCRIPT."""
        args: list[Any] = [condition, delete]
        for name, value in fields.items():
            args += [name, value]
        changed = int(await self._update(keys=[self._record_key(digest)], args=args))
        if changed == 1:
            await self.redis.publish(self.changes_channel, digest)
            self.forget(digest)
        return changed

    def _check_changed(self, changed: int, record: KeyRecord) -> None:
        if changed == 1:
            return
        if changed == 0:
            raise KeyNotFound(
                f"write key {record.prefix}... was deleted meanwhile; list the keys with "
                "`signalsmith keys list`"
            )
        raise KeyConflict(
            self._conflict(
                msgspec.structs.replace(record, state=REVOKED if changed == -1 else record.state),
                "change",
            )
        )

    def _conflict(self, record: KeyRecord, action: str) -> str:
        state = record.state_at(time.time())
        if state == "revoked":
            return (
                f"cannot {action} write key {record.prefix}...: it is revoked; create a new "
                f"one with `signalsmith keys create --source {record.source}`"
            )
        if record.replaced_by:
            return (
                f"cannot {action} write key {record.prefix}...: it was rotated and is "
                f"{state}; work with the key that replaced it, {record.replaced_by}..."
            )
        return f"cannot {action} write key {record.prefix}...: it is {state}"

    async def _discard(self, digest: str, record: KeyRecord) -> None:
        """Remove a key that was never shown to anyone."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._record_key(digest))
            pipe.srem(self._source_keys_key(record.source), digest)
            pipe.hdel(self._prefix_index_key(), record.prefix)
            await pipe.execute()

    async def _reread(self, digest: str) -> KeyRecord:
        (record,) = await self._fetch([digest])
        if record is None:
            raise KeyNotFound("the write key was deleted meanwhile; list the keys again")
        return record

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

    async def lookup(self, plaintext: str) -> WriteKeySource | None:
        """The source a key opens, read from Redis now (no cache); None if unknown or refused."""
        if not plaintext or len(plaintext) > MAX_KEY_LENGTH:
            return None
        digest = hash_key(plaintext)
        (record,) = await self._fetch([digest])
        if record is None or not record.accepts(time.time()):
            return None
        return record.to_source(digest)

    async def authenticate(self, write_keys: Iterable[str]) -> WriteKeySource | None:
        """The source of the first key in ``write_keys`` that resolves, or None.

        Answers come from the in-process cache when fresh; all other candidates are read in a
        single round trip.
        """
        now = self.clock()
        wall = time.time()
        # dict.fromkeys drops repeated keys while keeping the order they should be tried in.
        digests = list(
            dict.fromkeys(hash_key(k) for k in write_keys if k and len(k) <= MAX_KEY_LENGTH)
        )
        answers: dict[str, WriteKeySource | None] = {}
        missing: list[str] = []
        for digest in digests:
            cached = self._cache.get(digest)
            if cached is not None and cached.deadline > now:
                source = cached.source
                if cached.key_expires_at is not None and wall >= cached.key_expires_at:
                    source = None  # a rotated key whose grace ended while it was cached
                answers[digest] = source
                if source is not None and not missing:
                    # An earlier candidate can no longer win: no need to ask Redis at all.
                    return source
            else:
                missing.append(digest)
        if missing:
            generation = self._generation
            records = await self._fetch(missing)
            for digest, record in zip(missing, records, strict=True):
                accepted = record is not None and record.accepts(wall)
                source = record.to_source(digest) if record is not None and accepted else None
                answers[digest] = source
                if generation == self._generation:
                    self._remember(
                        digest, source, now, record.expires_at if record is not None else None
                    )
        for digest in digests:
            source = answers[digest]
            if source is not None:
                return source
        return None

    async def admit(self, source: WriteKeySource, count: int) -> Decision:
        """Check the key again and take ``count`` events from its bucket: one round trip."""
        decision = await self.limiter.admit(source.key_hash, count)
        if decision.outcome in ("unknown", "revoked", "expired"):
            # Refused by Redis while this process still had it cached: the invalidation
            # message is on its way, but there is no need to wait for it.
            self.forget(source.key_hash)
        return decision

    def _remember(
        self,
        digest: str,
        source: WriteKeySource | None,
        now: float,
        key_expires_at: float | None,
    ) -> None:
        if len(self._cache) >= self.max_cached:
            # Bounded, so a client spraying random keys cannot grow the process: drop what has
            # expired, and everything if that is not enough (a cold cache costs one round trip).
            self._cache = {d: e for d, e in self._cache.items() if e.deadline > now}
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
        if source is None:
            ttl = self.negative_ttl
        else:
            ttl = self.ttl if self.subscribed else self.unsubscribed_ttl
        self._cache[digest] = _Cached(now + ttl, source, key_expires_at)

    def forget(self, digest: str) -> None:
        """Drop one key's cached answer (it changed)."""
        self._generation += 1
        self._cache.pop(digest, None)

    def forget_all(self) -> None:
        """Drop every cached answer (changes may have been missed)."""
        self._generation += 1
        self._cache.clear()


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
