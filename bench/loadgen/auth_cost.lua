-- wrk script for bench/auth_cost.py: POST /v1/batch with Basic auth and never-seen messageIds.
--
-- BENCH_AUTH is the Authorization header value; BENCH_BATCH events per request; BENCH_TAG a tag
-- unique to this wrk run. Each id is <tag>-<thread>-<counter>-<index>, so the collector's dedupe
-- never short-circuits an append (a repeated id would skip the XADD and flatter the numbers).
-- done() prints one line, BENCH_JSON {...}, that bench/auth_cost.py reads.

local auth = os.getenv("BENCH_AUTH")
local batch = tonumber(os.getenv("BENCH_BATCH") or "1")
local tag = os.getenv("BENCH_TAG") or "bench"
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = auth,
}

request = function()
  counter = counter + 1
  local parts = {}
  for i = 1, batch do
    parts[i] = string.format(
      '{"type":"track","event":"Order Completed","userId":"user-1",' ..
      '"messageId":"%s-%d-%d-%d","properties":{"revenue":19.99,"currency":"USD"},' ..
      '"context":{"library":{"name":"bench","version":"0"}}}',
      tag, tid or 0, counter, i)
  end
  return wrk.format("POST", "/v1/batch", headers, '{"batch":[' .. table.concat(parts, ",") .. "]}")
end

function done(summary, latency, requests)
  local non_ok = summary.errors.status
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, non_ok,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
