"""Redis CPU per event of the collector's append, taken apart: dedupe, Lua, the XADD itself.

    .venv/bin/python bench/append_cost.py [--rounds 3] [--requests 600]

Starts a private redis-server (AOF everysec, as the embedded default) and, alternating for several
rounds, sends the same 100-event appends (realistic Ecommerce track events, msgpack-encoded as the
collector encodes them, fresh messageIds each time) four ways, pipelined 20 at a time:

- append script: ``signalsmith.buffer.APPEND_SCRIPT`` as the collector runs it (backlog cap,
  messageIds looked up in and added to time-bucket sets, one ``XADD`` of the request's events);
- per-id keys: the script before that, with one ``SET NX EX`` key per messageId;
- without dedupe: that script with the ``SET``s taken out;
- script, XADD only: a script that only does the ``XADD``;
- plain XADD: the command without a script (what the bench's bare baseline sends).

Redis CPU is read from ``INFO cpu`` (user + sys) around each variant. The differences say what
each part costs Redis per event; `bench/RESULTS.md` records a run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from pathlib import Path

import msgspec
import redis
from ingest import fresh_redis
from warehouse_insert import make_events

from signalsmith.buffer import APPEND_SCRIPT
from signalsmith.model import event_list_encoder

EVENTS_PER_REQUEST = 100
PIPELINE_DEPTH = 20
STREAM = "bench:events"
SEEN_PREFIX = "bench:seen:"

# The append script before the dedupe moved to bucket sets (commit 3a84477 and earlier): one
# SET NX EX key per messageId. Kept to compare against, and to take the Lua part apart.
PER_ID_KEYS = """
local stream = KEYS[1]
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('XLEN', stream) >= cap then
  return -1
end
local ttl = ARGV[2]
local prefix = ARGV[3]
local n = tonumber(ARGV[6])
local ids = cmsgpack.unpack(ARGV[7])
local dups = {}
for i = 1, n do
  if not redis.call('SET', prefix .. ids[i], '1', 'NX', 'EX', ttl) then
    dups[#dups + 1] = i - 1
  end
end
if #dups < n then
  if #dups > 0 then
    redis.call('XADD', stream, '*', 'v', '1', 'src', ARGV[4], 'n', n, 'd', ARGV[5],
               'dup', table.concat(dups, ','))
  else
    redis.call('XADD', stream, '*', 'v', '1', 'src', ARGV[4], 'n', n, 'd', ARGV[5])
  end
end
return dups
"""
WITHOUT_DEDUPE = PER_ID_KEYS.replace(
    "if not redis.call('SET', prefix .. ids[i], '1', 'NX', 'EX', ttl) then", "if false then"
)
assert WITHOUT_DEDUPE != PER_ID_KEYS
XADD_ONLY = (
    "return redis.call('XADD', KEYS[1], '*', 'v', '1', 'src', ARGV[4], 'n', ARGV[6], 'd', ARGV[5])"
)
VARIANTS: dict[str, str | None] = {
    "append script": APPEND_SCRIPT,
    "per-id keys": PER_ID_KEYS,
    "without dedupe": WITHOUT_DEDUPE,
    "script, XADD only": XADD_ONLY,
    "plain XADD": None,
}


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_variant(
    client: redis.Redis, script: str | None, payloads: list[bytes], ids_per_request: int
) -> float:
    """Redis CPU microseconds per event for one pass over ``payloads``."""
    sha = client.script_load(script) if script is not None else None
    before = redis_cpu(client)
    pipe = client.pipeline(transaction=False)
    for index, payload in enumerate(payloads):
        if sha is not None:
            ids = msgspec.msgpack.encode([str(uuid.uuid4()) for _ in range(ids_per_request)])
            if script == APPEND_SCRIPT:  # ids, then the entry's fields (stream.entry_fields)
                args = [ids, "v", "1", "src", "bench", "n", ids_per_request, "d", payload]
            else:  # the frozen variants: source, payload, count, ids
                args = ["bench", payload, ids_per_request, ids]
            pipe.evalsha(sha, 1, STREAM, 0, 86_400, SEEN_PREFIX, *args)
        else:
            pipe.xadd(STREAM, {"v": "1", "src": "bench", "n": ids_per_request, "d": payload})
        if index % PIPELINE_DEPTH == PIPELINE_DEPTH - 1:
            pipe.execute()
    pipe.execute()
    used = redis_cpu(client) - before
    client.delete(STREAM)
    return used / (len(payloads) * ids_per_request) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=600, help="100-event appends per pass")
    args = parser.parse_args()

    events = make_events(EVENTS_PER_REQUEST * 50)
    chunks = [
        events[start : start + EVENTS_PER_REQUEST]
        for start in range(0, len(events), EVENTS_PER_REQUEST)
    ]
    payloads = [event_list_encoder.encode(chunks[i % len(chunks)]) for i in range(args.requests)]
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="ss-bench-append-") as directory:
        with fresh_redis(Path(directory), aof=True) as (buffer, description):
            client = redis.Redis.from_url(buffer.server.url)
            for round_number in range(args.rounds):
                names = list(VARIANTS)
                if round_number % 2:
                    names.reverse()
                for name in names:
                    cost = run_variant(client, VARIANTS[name], payloads, EVENTS_PER_REQUEST)
                    results[name].append(cost)
                    print(f"round {round_number + 1} {name:<18} {cost:5.2f} µs/event", flush=True)
            client.close()
    size = statistics.mean(len(payload) for payload in payloads) / EVENTS_PER_REQUEST
    print()
    print(f"{description}; {EVENTS_PER_REQUEST}-event appends of {size:.0f} bytes/event (msgpack)")
    print("| variant | Redis CPU µs/event (median) | per-round |")
    print("|---|---:|---|")
    for name, costs in results.items():
        spread = ", ".join(f"{cost:.2f}" for cost in costs)
        print(f"| {name} | {statistics.median(costs):.2f} | {spread} |")


if __name__ == "__main__":
    main()
