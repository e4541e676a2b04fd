"""The workspace's numbered versions in Redis, and applying a new one with compare-and-set.

Layout, under the deployment's key prefix ``P``:

- ``P:workspace:current``: the number of the version every process should run (absent: none);
- ``P:workspace:versions``: hash, version number -> the version as JSON (``StoredVersion``: the
  document's text as written, the text of the files it includes, and who applied it, when, why
  and from which version);
- ``P:workspace:destination-names``: set of every destination name any version declared (a
  worker deletes the consumer group of one the current version no longer declares);
- ``P:workspace:positions``: hash, version number -> the event stream's id at the moment it was
  applied (Redis's clock), where a destination the version adds starts reading;
- channel ``P:workspace:changes``: the new version's number, published by every apply.

A version is never changed once stored; a rollback stores a new version equal to an old one.
Secrets are stored as the ``${ENV_NAME}`` placeholders the document was written with.
"""

from __future__ import annotations

import getpass
import hashlib
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from signalsmith.workspace.text import DocumentText

if TYPE_CHECKING:
    import redis.asyncio as aioredis

# KEYS[1]: current; KEYS[2]: versions hash; KEYS[3]: destination names set; KEYS[4]: positions.
# ARGV[1]: the base version (0: none); ARGV[2]: the new version's JSON, numbered base + 1;
# ARGV[3]: the changes channel; ARGV[4..]: the new version's destination names.
# Returns {1, new version} when stored, {0, current version} when the base is stale.
APPLY_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
local version = current + 1
redis.call('HSET', KEYS[2], tostring(version), ARGV[2])
local now = redis.call('TIME')
local millis = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[4], tostring(version), string.format('%d-0', millis))
redis.call('SET', KEYS[1], tostring(version))
if #ARGV > 3 then redis.call('SADD', KEYS[3], unpack(ARGV, 4)) end
redis.call('PUBLISH', ARGV[3], tostring(version))
return {1, version}
"""


class VersionInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What `config history` lists about a version."""

    version: int
    applied_at: datetime
    applied_by: str
    base_version: int
    digest: str
    comment: str = ""
    # Set on a rollback: the version whose document this one restores.
    rollback_of: int | None = None


class StoredVersion(VersionInfo, frozen=True, kw_only=True):
    """A version as stored: its metadata, and its document as written."""

    text: str
    files: dict[str, str] = {}
    format: str = "yaml"

    @property
    def document(self) -> DocumentText:
        return DocumentText(text=self.text, files=self.files, format=self.format)

    @property
    def info(self) -> VersionInfo:
        return VersionInfo(
            version=self.version,
            applied_at=self.applied_at,
            applied_by=self.applied_by,
            base_version=self.base_version,
            digest=self.digest,
            comment=self.comment,
            rollback_of=self.rollback_of,
        )


class StaleBase(Exception):
    """An apply based on a version that is no longer the current one."""

    def __init__(self, base: int, current: int) -> None:
        super().__init__(
            f"this change is based on version {base}, but the current version is {current} "
            "(someone applied meanwhile); run `signalsmith config diff FILE` to see what "
            "changed, and apply again"
        )
        self.base = base
        self.current = current


def digest_of(document: DocumentText) -> str:
    """The SHA-256 of a document's text, included files and format: equal means unchanged."""
    encoded = msgspec.json.encode([document.format, document.text, sorted(document.files.items())])
    return hashlib.sha256(encoded).hexdigest()


def who() -> str:
    """``user@host`` of this process, for `config history`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


_decode = msgspec.json.Decoder(StoredVersion)


class WorkspaceStore:
    """Reads and writes the versions (module docstring)."""

    def __init__(self, redis: aioredis.Redis, key: Callable[..., str]) -> None:
        self.redis = redis
        self.current_key = key("workspace", "current")
        self.versions_key = key("workspace", "versions")
        self.destination_names_key = key("workspace", "destination-names")
        self.positions_key = key("workspace", "positions")
        self.changes_channel = key("workspace", "changes")
        self._apply = redis.register_script(APPLY_SCRIPT)

    async def current_version(self) -> int:
        """The current version's number; 0 when no version was ever applied."""
        raw = await self.redis.get(self.current_key)
        return int(raw) if raw is not None else 0

    async def get(self, version: int) -> StoredVersion | None:
        raw = await self.redis.hget(self.versions_key, str(version))
        return _decode.decode(raw) if raw is not None else None

    async def current(self) -> StoredVersion | None:
        version = await self.current_version()
        return await self.get(version) if version else None

    async def history(self) -> list[VersionInfo]:
        """Every version's metadata, newest first."""
        raw = await self.redis.hvals(self.versions_key)
        versions = [_decode.decode(item).info for item in raw]
        return sorted(versions, key=lambda info: info.version, reverse=True)

    async def position(self, version: int) -> str:
        """The stream id at which ``version`` was applied ("0" when unknown)."""
        raw = await self.redis.hget(self.positions_key, str(version))
        return raw.decode() if isinstance(raw, bytes) else (raw or "0")

    async def destination_names(self) -> set[str]:
        names = await self.redis.smembers(self.destination_names_key)
        return {name.decode() if isinstance(name, bytes) else name for name in names}

    async def store(
        self,
        document: DocumentText,
        *,
        base_version: int,
        destinations: list[str],
        applied_by: str,
        comment: str = "",
        rollback_of: int | None = None,
    ) -> StoredVersion:
        """Store ``document`` as version ``base_version + 1``, if ``base_version`` is current.

        Raises ``StaleBase`` otherwise: nothing is written.
        """
        record = StoredVersion(
            version=base_version + 1,
            applied_at=datetime.now(UTC),
            applied_by=applied_by,
            base_version=base_version,
            digest=digest_of(document),
            comment=comment,
            rollback_of=rollback_of,
            text=document.text,
            files=dict(document.files),
            format=document.format,
        )
        stored, number = await self._apply(
            keys=[
                self.current_key,
                self.versions_key,
                self.destination_names_key,
                self.positions_key,
            ],
            args=[
                base_version,
                msgspec.json.encode(record),
                self.changes_channel,
                *destinations,
            ],
        )
        if not int(stored):
            raise StaleBase(base_version, int(number))
        return record
