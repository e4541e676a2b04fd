"""Per-key rate limits: one Lua script that checks the key and takes its events, in one round trip.

The limiter is GCRA (the generic cell rate algorithm, a token bucket kept as a single
timestamp). Each key's record holds ``tat``, the "theoretical arrival time" in microseconds:
when the key's bucket would be full again. A request of ``n`` events at time ``now`` is allowed
when ``max(tat, now) + n * T - burst * T <= now``, where ``T = 1 / rate``; ``tat`` then moves
on by ``n * T``. So a quiet key accepts exactly ``burst`` events at once and then ``rate`` events
a second, and a refused request takes nothing.

The script reads the clock with Redis ``TIME``, so every collector process is measured by the one
clock of the server that holds the key, and it re-checks the key's state and rotation deadline
itself: a key revoked a moment ago is refused on the next request even by a process whose cache
still holds it. It touches only the key's own record (one Redis key), so it can run on any one
shard of a cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from signalsmith import Refusal
from signalsmith_auth_writekey.plans import FREE

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from signalsmith_auth_writekey.keys import WriteKeySource

# KEYS[1]: the key's record. ARGV[1]: events in the request. Records written before keys
# carried their own rate and burst (version 0.1 made only free keys) get the free plan's.
# Returns {outcome, retry_us, reset_us, rate, burst, text}; outcome 0 admitted, 1 unknown,
# 2 revoked (text: revoked_at), 3 rotated and past its grace (text: expires_at),
# 4 over the rate (retry_us: until the request would fit; reset_us: until the bucket is full),
# 5 more events than the burst (can never fit).
ADMIT_SCRIPT = """
local f = redis.call('HMGET', KEYS[1], 'source', 'state', 'rate', 'burst', 'expires_at',
                     'tat', 'last_used', 'revoked_at')
if not f[1] then
  return {1, 0, 0, 0, 0, ''}
end
if f[2] ~= 'active' then
  return {2, 0, 0, 0, 0, f[8] or ''}
end
local clock = redis.call('TIME')
local now_s = tonumber(clock[1])
local now = now_s * 1000000 + tonumber(clock[2])
local expires = tonumber(f[5])
if expires and now >= expires * 1000000 then
  return {3, 0, 0, 0, 0, f[5]}
end
local rate = tonumber(f[3]) or FREE_RATE
local burst = tonumber(f[4]) or FREE_BURST
local cost = tonumber(ARGV[1])
-- last_used is kept to the second, so a busy key writes it at most once a second.
local touch = (tonumber(f[7]) or 0) ~= now_s
if cost > burst then
  if touch then redis.call('HSET', KEYS[1], 'last_used', now_s) end
  return {5, 0, 0, rate, burst, ''}
end
local interval = 1000000 / rate
local tat = tonumber(f[6]) or now
if tat < now then tat = now end
local new_tat = tat + cost * interval
local wait = new_tat - burst * interval - now
-- A hundredth of one event's interval absorbs floating-point rounding; it can never let a
-- whole extra event through.
if wait > interval / 100 then
  if touch then redis.call('HSET', KEYS[1], 'last_used', now_s) end
  -- The tolerance can leave tat a hair past a full bucket's worth ahead; the bucket is never
  -- more than that from full, so a 5 s bucket never reports a 6 s reset.
  return {4, math.ceil(wait), math.ceil(math.min(tat - now, burst * interval)), rate, burst, ''}
end
if touch then
  redis.call('HSET', KEYS[1], 'tat', new_tat, 'last_used', now_s)
else
  redis.call('HSET', KEYS[1], 'tat', new_tat)
end
return {0, 0, math.ceil(math.min(new_tat - now, burst * interval)), rate, burst, ''}
""".replace("FREE_RATE", str(FREE.rate)).replace("FREE_BURST", str(FREE.burst))

Outcome = Literal["admitted", "unknown", "revoked", "expired", "limited", "over_burst"]
_OUTCOMES: tuple[Outcome, ...] = (
    "admitted",
    "unknown",
    "revoked",
    "expired",
    "limited",
    "over_burst",
)
MICROSECONDS = 1_000_000


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What the script decided for one request."""

    outcome: Outcome
    # Whole seconds, rounded up and at least 1, when the outcome is "limited".
    retry_after: int = 0
    # Whole seconds until the key's whole burst is available again (at least 1 when limited).
    reset_after: int = 0
    rate: int = 0
    burst: int = 0
    # revoked_at (ISO) for "revoked", expires_at (epoch seconds) for "expired".
    detail: str = ""


def _seconds(microseconds: int) -> int:
    """Whole seconds, rounded up, at least 1: what Retry-After and X-RateLimit-Reset carry."""
    return max(1, -(-microseconds // MICROSECONDS))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class RateLimiter:
    """Runs the admit script (EVALSHA), coalescing the checks of concurrent requests.

    Requests that arrive while a round trip is in flight are sent together in the next one:
    each request still costs at most one round trip, and under load the system calls and
    redis-py's per-command work are paid once per batch rather than once per request. The
    commands are packed here (RESP) and written on a pooled connection in one write: redis-py's
    own pipeline costs about twice the CPU per command (`bench/RESULTS.md`).
    """

    def __init__(self, redis: aioredis.Redis, record_key: Callable[[str], str]) -> None:
        self.redis = redis
        self.record_key = record_key
        sha = hashlib.sha1(ADMIT_SCRIPT.encode()).hexdigest().encode()
        # EVALSHA <sha> 1 <record key> <count>: five parts, the first three always the same.
        self._head = b"*5\r\n" + _bulk(b"EVALSHA") + _bulk(sha) + _bulk(b"1")
        self._pending: list[tuple[bytes, asyncio.Future[list[Any]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def admit(self, digest: str, count: int) -> Decision:
        """Check the key ``digest`` and take ``count`` events from its bucket if they fit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        command = self._head + _bulk(self.record_key(digest).encode()) + _bulk(str(count).encode())
        self._pending.append((command, future))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            # A task of its own, run on the next turn of the loop: every request that is ready
            # by then joins the same round trip, and none waits for another's.
            self._flusher = loop.create_task(self._flush())
        outcome, retry_us, reset_us, rate, burst, detail = await future
        name = _OUTCOMES[int(outcome)]
        limited = name == "limited"
        return Decision(
            outcome=name,
            retry_after=_seconds(int(retry_us)) if limited else 0,
            reset_after=_seconds(int(reset_us)) if limited else 0,
            rate=int(rate),
            burst=int(burst),
            detail=_text(detail),
        )

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                replies = await self._run([command for command, _ in batch])
            except BaseException as error:  # every waiting request must get an answer
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                continue
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _run(self, commands: list[bytes]) -> list[Any]:
        """The script's replies to ``commands``, in one round trip."""
        replies = await self._send(commands)
        failed = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if failed:
            # A new, restarted or flushed Redis does not have the script, and nothing ran for
            # those commands: load it and send them again.
            await self.redis.script_load(ADMIT_SCRIPT)
            retried = await self._send([commands[i] for i in failed])
            for index, reply in zip(failed, retried, strict=True):
                replies[index] = reply
        return replies

    async def _send(self, commands: list[bytes]) -> list[Any]:
        try:
            return await self._send_once(commands)
        except RedisConnectionError:
            # A pooled connection the server closed (Redis restarted) fails on first use, as
            # redis-py's own commands do before their retry: try once more on a fresh one. Had
            # the connection broken after Redis ran the commands, their events would count twice
            # against the limit: a refusal too many at worst, never an event too many.
            return await self._send_once(commands)

    async def _send_once(self, commands: list[bytes]) -> list[Any]:
        pool = self.redis.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(b"".join(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:  # this command's own error; the rest still come
                    replies.append(error)
            return replies
        finally:
            # A connection that failed mid-way was closed by redis-py; the pool reconnects it.
            await pool.release(connection)


def refusal_for(decision: Decision, source: WriteKeySource) -> Refusal | None:
    """The answer for a request the script did not admit (None when it did)."""
    key = f"write key {source.key_prefix}..."
    if decision.outcome == "admitted":
        return None
    if decision.outcome == "limited":
        return Refusal(
            retry_after=decision.retry_after,
            reset_after=decision.reset_after,
            reason="rate_limited",
            message=(
                f"{key} is over its rate limit ({decision.rate} events/s, bursts of "
                f"{decision.burst}, plan {source.plan}); retry in {decision.retry_after} s, "
                f"or move the key to a larger plan with `signalsmith keys set-plan`"
            ),
        )
    if decision.outcome == "over_burst":
        # 413, not 429: waiting can never make this request fit, and clients retry a 429.
        return Refusal(
            status=413,
            retry_after=0,
            reason="batch_over_burst",
            message=(
                f"{key} may send at most {decision.burst} events at once (plan "
                f"{source.plan}); split this batch into batches of at most "
                f"{decision.burst} events"
            ),
        )
    if decision.outcome == "revoked":
        return Refusal(
            status=401,
            retry_after=0,
            reason="write_key_revoked",
            message=(
                f"{key} was revoked{' at ' + decision.detail if decision.detail else ''}; "
                f"create a new one with `signalsmith keys create --source {source.id}`"
            ),
        )
    if decision.outcome == "expired":
        return Refusal(
            status=401,
            retry_after=0,
            reason="write_key_expired",
            message=(
                f"{key} was rotated and its grace period is over; use the key that replaced "
                f"it (`signalsmith keys list --source {source.id}`)"
            ),
        )
    return Refusal(
        status=401,
        retry_after=0,
        reason="invalid_write_key",
        message="write key not recognised; create one with `signalsmith keys create`",
    )
