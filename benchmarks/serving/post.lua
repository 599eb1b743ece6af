-- wrk script: POST the JSON bodies in $BENCH_BODY_FILE (one a line; a single-task run has one) to
-- the given URL, each connection's thread rotating through them in order, and print a JSON
-- summary (latency percentiles in microseconds, requests, non-2xx responses, socket errors) at
-- the end. The requests are formatted once, at load: the rotation costs wrk nothing per request.
local path = os.getenv("BENCH_BODY_FILE")
local file = assert(io.open(path, "rb"), "cannot open BENCH_BODY_FILE " .. tostring(path))
local bodies = {}
for line in file:lines() do
  if #line > 0 then bodies[#bodies + 1] = line end
end
file:close()
assert(#bodies > 0, "no body in BENCH_BODY_FILE " .. path)

local requests = {}
local next_index = 1
local headers = {["Content-Type"] = "application/json"}
for i, body in ipairs(bodies) do
  requests[i] = wrk.format("POST", nil, headers, body)
end

function request()
  local req = requests[next_index]
  next_index = next_index % #requests + 1
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.max))
end
