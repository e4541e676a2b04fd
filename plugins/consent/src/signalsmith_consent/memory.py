"""Each user's last consent preferences, remembered in Redis, shared by every process.

One hash per identity (a userId or an anonymousId, one namespace), ``<prefix>:consent:user:<id>``:

| field | value |
| --- | --- |
| ``p`` | the preferences as JSON (``categoryPreferences``), or empty when none were set yet |
| ``since`` | when they were set: the timestamp of the event that set them (ISO 8601) |
| ``ms`` | the same, in Unix milliseconds (a later choice wins, whatever order events arrive in) |
| ``by`` | the messageId of that event; ``src`` its source |
| ``links`` | JSON list of the identities linked to this one (identify, alias) |

Identities an event links (its userId and anonymousId; an alias's previousId and userId) share
one record: every write goes to the whole linked group, in one Lua script, so reading one hash
is enough. There is no per-process cache: each request reads what Redis holds (one round trip
for the whole batch), so a withdrawal applies to the next event any collector receives.
Each write sets the group's time to live (``consent.remember_days``).
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

# A group of linked identities larger than this is not grown further: a client that aliases
# thousands of ids to one user must not make every write to it that large.
MAX_LINKED = 64

# ARGV[1]: key prefix (`<prefix>:consent:user:`); ARGV[2]: time to live in seconds;
# ARGV[3]: JSON list of operations, applied in order, each {ids, p?, since?, ms?, by?, src?}:
# ARGV[4]: the most identities one group holds; ARGV[5-7]: the dropped counter's key (empty:
# none), the source, and how many events of it were dropped.
# with `p` (preferences as JSON text) it sets the group's preferences unless the group holds a
# later choice; without, it links `ids` into one group, which keeps the latest choice among them.
# Keys are derived from the prefix, so this runs on a single Redis (not a cluster).
UPDATE_SCRIPT = """
local prefix = ARGV[1]
local ttl = tonumber(ARGV[2])
local ops = cjson.decode(ARGV[3])
local max_linked = tonumber(ARGV[4])
for _, op in ipairs(ops) do
  local seen, members = {}, {}
  local function add(id)
    if not seen[id] and #members < max_linked then
      seen[id] = true
      members[#members + 1] = id
    end
  end
  for _, id in ipairs(op.ids) do add(id) end
  local best = nil
  local i = 1
  while i <= #members do
    local found = redis.call('HMGET', prefix .. members[i], 'p', 'since', 'ms', 'by', 'src', 'links')
    if found[6] then
      for _, linked in ipairs(cjson.decode(found[6])) do add(linked) end
    end
    if found[1] and found[1] ~= '' then
      local ms = tonumber(found[3]) or 0
      if best == nil or ms > best.ms then
        best = {p = found[1], since = found[2], ms = ms, by = found[4], src = found[5]}
      end
    end
    i = i + 1
  end
  if op.p then
    local ms = tonumber(op.ms) or 0
    if best == nil or ms >= best.ms then
      best = {p = op.p, since = op.since, ms = ms, by = op.by, src = op.src}
    end
  end
  for _, id in ipairs(members) do
    local others = {}
    for _, other in ipairs(members) do
      if other ~= id then others[#others + 1] = other end
    end
    local key = prefix .. id
    local links = '[]'
    if #others > 0 then links = cjson.encode(others) end
    if best then
      redis.call('HSET', key, 'p', best.p, 'since', best.since or '', 'ms', best.ms,
        'by', best.by or '', 'src', best.src or '', 'links', links)
    else
      redis.call('HSET', key, 'p', '', 'links', links)
    end
    redis.call('EXPIRE', key, ttl)
  end
end
if ARGV[5] ~= '' then
  redis.call('HINCRBY', ARGV[5], ARGV[6], tonumber(ARGV[7]))
end
return #ops
"""

# KEYS: the identities' hashes. One command for the whole batch, so the collector's
# auto-pipelined client sends it together with other requests' commands.
# ARGV[1]: "full" for every field, else only what judging needs (preferences, time, links).
# The reply is flat (the fields of each key in turn): redis-py reads a flat list several times
# faster than a nested one.
READ_SCRIPT = """
local fields = {'p', 'ms', 'links'}
if ARGV[1] == 'full' then fields = {'p', 'since', 'ms', 'by', 'src', 'links'} end
local found = {}
for _, key in ipairs(KEYS) do
  local values = redis.call('HMGET', key, unpack(fields))
  for j = 1, #fields do found[#found + 1] = values[j] or '' end
end
return found
"""
JUDGING_FIELDS = 3
ALL_FIELDS = 6


class Remembered(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What is remembered for one identity."""

    identity: str
    # None: linked to others, but no preferences were set yet.
    preferences: dict[str, Any] | None = None
    since: str | None = None
    ms: int = 0
    message_id: str | None = None
    source_id: str | None = None
    linked: tuple[str, ...] = ()
    # Seconds until it is forgotten (None: not known here).
    expires_in: int | None = None


class Operation(msgspec.Struct, frozen=True, omit_defaults=True):
    """One change ``UPDATE_SCRIPT`` applies (its wire form)."""

    ids: list[str]
    p: str | None = None
    since: str | None = None
    ms: int | None = None
    by: str | None = None
    src: str | None = None


_operations = msgspec.json.Encoder()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


_preferences = msgspec.json.Decoder(dict[str, Any])
_links = msgspec.json.Decoder(list[str])


def _for_judging(identity: str, found: list[Any]) -> Remembered | None:
    """A record from the three fields judging reads (the request path: decoded straight from
    Redis's bytes; a missing field reads as empty)."""
    preferences, ms, links = found
    if not preferences and not links:
        return None
    return Remembered(
        identity=identity,
        preferences=_preferences.decode(preferences) if preferences else None,
        ms=int(ms) if ms else 0,
        linked=tuple(_links.decode(links)) if links else (),
    )


def _decode(identity: str, found: list[Any]) -> Remembered | None:
    if len(found) == JUDGING_FIELDS:
        return _for_judging(identity, found)
    if not found[0] and not found[-1]:
        return None
    preferences_text, since, ms, by, src, links = (_text(value) for value in found)
    preferences = msgspec.json.decode(preferences_text) if preferences_text else None
    linked = msgspec.json.decode(links) if links else []
    return Remembered(
        identity=identity,
        preferences=preferences if isinstance(preferences, dict) else None,
        since=since or None,
        ms=int(ms) if ms else 0,
        message_id=by or None,
        source_id=src or None,
        linked=tuple(linked) if isinstance(linked, list) else (),
    )


class ConsentMemory:
    """The remembered preferences of one deployment (its key prefix)."""

    def __init__(self, redis: aioredis.Redis, key_prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = f"{key_prefix}:consent:user:"
        self.dropped_key = f"{key_prefix}:consent:dropped"
        self.ttl_seconds = ttl_seconds
        self._update = redis.register_script(UPDATE_SCRIPT)
        self._read = redis.register_script(READ_SCRIPT)

    def key(self, identity: str) -> str:
        return self.prefix + identity

    async def read(self, identities: list[str], *, full: bool = False) -> dict[str, Remembered]:
        """What is remembered for each of ``identities`` that has a record, in one command:
        what judging needs (preferences, their time, links), or every field when ``full``."""
        if not identities:
            return {}
        answers = await self._read(
            keys=[self.key(identity) for identity in identities], args=["full" if full else ""]
        )
        width = ALL_FIELDS if full else JUDGING_FIELDS
        found: dict[str, Remembered] = {}
        for position, identity in enumerate(identities):
            record = _decode(identity, answers[position * width : (position + 1) * width])
            if record is not None:
                found[identity] = record
        return found

    async def write(
        self,
        operations: list[Operation],
        *,
        ttl_seconds: int | None = None,
        dropped: dict[str, int] | None = None,
    ) -> None:
        """Apply ``operations`` in order (one script call), and count events dropped for want of
        consent, by source (in the same round trip)."""
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        counted = [(source, count) for source, count in (dropped or {}).items() if count]
        if not operations and not counted:
            return
        # One command (the drops of one request are of one source).
        source_id, count = counted[0] if counted else ("", 0)
        await self._update(
            keys=[],
            args=[
                self.prefix,
                ttl,
                _operations.encode(operations),
                MAX_LINKED,
                self.dropped_key if counted else "",
                source_id,
                count,
            ],
        )
        for source_id, count in counted[1:]:
            await self.redis.hincrby(self.dropped_key, source_id, count)

    async def show(self, identity: str) -> list[Remembered]:
        """The record of ``identity`` and of every identity linked to it (empty: none)."""
        first = await self.read([identity], full=True)
        record = first.get(identity)
        if record is None:
            return []
        others = await self.read(list(record.linked), full=True)
        records = [record, *(others[linked] for linked in record.linked if linked in others)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for each in records:
                pipe.ttl(self.key(each.identity))
            ttls = await pipe.execute()
        return [
            msgspec.structs.replace(each, expires_in=ttl if ttl >= 0 else None)
            for each, ttl in zip(records, ttls, strict=True)
        ]

    async def forget(self, identity: str) -> list[str]:
        """Erase the record of ``identity`` and of every identity linked to it; the identities
        erased (empty: nothing was remembered)."""
        records = await self.show(identity)
        erased = [record.identity for record in records]
        if erased:
            await self.redis.delete(*(self.key(each) for each in erased))
        return erased

    async def dropped_counts(self) -> dict[str, int]:
        """Events dropped at collection for want of consent, by source id."""
        counts = await self.redis.hgetall(self.dropped_key)
        return {_text(source) or "": int(count) for source, count in counts.items()}
