-- wrk script for bench/ingest.py: every request carries messageIds never sent before.
--
-- BENCH_TEMPLATE names a template written by bench/ingest_payloads.py (format described there);
-- BENCH_TAG is 6 characters unique to this wrk run. Each id is <tag>-<thread>-<counter>-<index>.
-- Gzip templates have stored-block slots for the ids; only the trailer's CRC-32 is computed
-- here, with zlib through LuaJIT's FFI (the body itself is never compressed per request).
--
-- BENCH_RATE (requests/s over all threads) turns wrk's closed loop into a paced one: delay(),
-- which wrk calls after each response, hands the connection the next free send slot of a fixed
-- schedule (rate / threads per thread), so requests go out at the rate whatever the latency, as
-- long as some connection is free. wrk measures latency from the moment a request is written;
-- request() also records how late each send was against its slot ("send lag"): when that stays
-- near zero, no request waited for a connection and the latencies carry no coordinated omission.
-- wrk calls delay() before every request, a connection's first one included, so slots are
-- claimed and consumed in the same order and request() can pair each send with its slot (two
-- timers due in the same millisecond may swap, so the lag is exact to about 1 ms). wrk itself
-- also corrects its latency histogram for coordinated omission (stats_correct) before done().
--
-- done() prints one JSON line (BENCH_JSON ...) that bench/ingest.py reads.

local ffi = require("ffi")
ffi.cdef([[
unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len);
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local zlib = ffi.load("libz.so.1")
local timespec = ffi.new("bench_timespec")

local function now_s()
  ffi.C.clock_gettime(1, timespec) -- CLOCK_MONOTONIC
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

local function read_template(path)
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  local spec = { headers = {} }
  local pos = 1
  while true do
    local eol = data:find("\n", pos, true)
    local line = data:sub(pos, eol - 1)
    pos = eol + 1
    if line == "" then break end
    local key, value = line:match("^(%S+) (.*)$")
    if key == "header" then
      local name, header_value = value:match("^([^:]+): (.*)$")
      spec.headers[name] = header_value
    else
      spec[key] = value
    end
  end
  local slots = tonumber(spec.slots)
  local segments = {}
  for i = 1, 2 * (slots + 1) do
    local eol = data:find("\n", pos, true)
    local length = tonumber(data:sub(pos, eol - 1))
    segments[i] = data:sub(eol + 1, eol + length)
    pos = eol + 1 + length
  end
  spec.slots = slots
  spec.gzip = spec.gzip == "1"
  spec.plain = {}
  spec.wire = {}
  spec.plain_length = slots * tonumber(spec.idwidth)
  for i = 1, slots + 1 do
    spec.plain[i] = segments[i]
    spec.wire[i] = segments[slots + 1 + i]
    spec.plain_length = spec.plain_length + #segments[i]
  end
  return spec
end

local spec = read_template(os.getenv("BENCH_TEMPLATE"))
-- Exactly 6 characters: a gzip slot holds an id of exactly ID_WIDTH bytes.
local tag = ((os.getenv("BENCH_TAG") or "") .. "wrk000"):sub(1, 6)
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local threads = {}

-- Per-thread globals: setup() sets tid and nthreads; done() reads the counters.
tid = 0
nthreads = 1
sent = 0
late_1ms = 0
late_10ms = 0
max_lag_ms = 0
-- Send lag histogram in 0.1 ms buckets (index 0 .. 10000, the last one open-ended).
lag_buckets = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
  for _, t in ipairs(threads) do t:set("nthreads", #threads) end
end

function init(args)
  wrk.method = "POST"
  for name, value in pairs(spec.headers) do wrk.headers[name] = value end
end

local parts = {}
local slots_due = {}
local slot_head, slot_tail = 1, 0
local next_slot = nil

local function le32(value)
  return string.char(value % 256, math.floor(value / 256) % 256,
    math.floor(value / 65536) % 256, math.floor(value / 16777216) % 256)
end

local function post_body()
  sent = sent + 1
  local prefix = string.format("%s-%02d-%09d-", tag, tid, sent)
  local slots = spec.slots
  local ids = {}
  for i = 1, slots do
    ids[i] = prefix .. string.format("%03d", (i - 1) % 1000)
    parts[2 * i - 1] = spec.wire[i]
    parts[2 * i] = ids[i]
  end
  parts[2 * slots + 1] = spec.wire[slots + 1]
  local body = table.concat(parts, "", 1, 2 * slots + 1)
  if spec.gzip then
    local crc = 0
    for i = 1, slots do
      crc = zlib.crc32(crc, spec.plain[i], #spec.plain[i])
      crc = zlib.crc32(crc, ids[i], #ids[i])
    end
    crc = zlib.crc32(crc, spec.plain[slots + 1], #spec.plain[slots + 1])
    body = body .. le32(tonumber(crc)) .. le32(spec.plain_length % 4294967296)
  end
  return body
end

function request()
  -- No slot: wrk's own check of the script calls request() once before the run starts.
  if rate > 0 and slot_head <= slot_tail then
    local lag_ms = (now_s() - slots_due[slot_head]) * 1000
    slots_due[slot_head] = nil
    slot_head = slot_head + 1
    if lag_ms > 1 then late_1ms = late_1ms + 1 end
    if lag_ms > 10 then late_10ms = late_10ms + 1 end
    if lag_ms > max_lag_ms then max_lag_ms = lag_ms end
    local bucket = math.min(10000, math.max(0, math.floor(lag_ms * 10)))
    lag_buckets[bucket] = (lag_buckets[bucket] or 0) + 1
  end
  return wrk.format(nil, spec.path, nil, post_body())
end

if rate > 0 then
  function delay()
    local now = now_s()
    local interval = nthreads / rate
    if next_slot == nil then
      -- Threads start their schedules staggered, so together they send evenly.
      next_slot = now + tid * interval / nthreads
    end
    local due = next_slot
    next_slot = next_slot + interval
    slot_tail = slot_tail + 1
    slots_due[slot_tail] = due
    local wait_ms = (due - now) * 1000
    if wait_ms <= 0 then return 0 end
    return math.floor(wait_ms + 0.5)
  end
end

local function lag_percentile(buckets, total, p)
  local rank = math.ceil(total * p / 100)
  local seen = 0
  for i = 0, 10000 do
    seen = seen + (buckets[i] or 0)
    if seen >= rank and rank > 0 then return i / 10 end
  end
  return 0
end

function done(summary, latency, requests)
  local total_sent, late1, late10, max_lag = 0, 0, 0, 0, 0
  local buckets, paced = {}, 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    late1 = late1 + thread:get("late_1ms")
    late10 = late10 + thread:get("late_10ms")
    max_lag = math.max(max_lag, thread:get("max_lag_ms"))
    for i, count in pairs(thread:get("lag_buckets")) do
      buckets[i] = (buckets[i] or 0) + count
      paced = paced + count
    end
  end
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests": %d, "sent": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d}, ' ..
    '"send_lag_ms": {"paced": %d, "late_1ms": %d, "late_10ms": %d, "p99": %.1f, ' ..
    '"p999": %.1f, "max": %.1f}}\n',
    summary.requests, total_sent, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    paced, late1, late10, lag_percentile(buckets, paced, 99),
    lag_percentile(buckets, paced, 99.9), max_lag))
end
