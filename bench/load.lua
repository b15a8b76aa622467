-- wrk script of `make bench`: one operation for a fixed time, then every connection finishes
-- the request it has in flight and sends no more, so that each create the server stores has
-- its response counted (rows in the database == 2xx responses).
--
-- Arguments (after `--`): <POST|GET> <file> <seconds> [<bearer token>]
--   POST: the file holds the JSON body sent to wrk's URL on every request;
--   GET: the file holds ids, one a line; request i reads <wrk's URL>/<id i mod count>.
-- Prints "BENCH_DRAINED <seconds from first request to last response>" when its thread is
-- done, then (wrk stops on SIGINT) "BENCH_RESULT <json>": status counts, socket errors and
-- latency percentiles in microseconds. Run it with one thread (-t1).

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per thread from here on (each wrk thread has its own Lua state).
local seconds, started, deadline
local outstanding = 0  -- requests let go by delay() and not answered yet
local prepared, turn = {}, 0  -- requests formatted once in init(), sent in turn
statuses = {}  -- global: done() reads it with thread:get()

function init(args)
  local method, file = args[1], assert(io.open(args[2], "rb"))
  local headers = {}
  if args[4] and args[4] ~= "" then
    headers["Authorization"] = "Bearer " .. args[4]
  end
  if method == "POST" then
    headers["Content-Type"] = "application/json"
    table.insert(prepared, wrk.format("POST", nil, headers, file:read("*a")))
  else
    for id in file:lines() do
      table.insert(prepared, wrk.format("GET", wrk.path .. "/" .. id, headers))
    end
  end
  file:close()
  assert(#prepared > 0, "no requests in " .. args[2])
  seconds = tonumber(args[3])
end

function request()
  turn = turn % #prepared + 1
  return prepared[turn]
end

-- Called before every request a connection sends (wrk's c->delayed is set after each
-- response and before the first request).
function delay()
  local t = now()
  if not started then
    started = t
    deadline = t + seconds
  end
  if t < deadline then
    outstanding = outstanding + 1
    return 0
  end
  return 24 * 3600 * 1000  -- time is up: this connection sends nothing more
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  outstanding = outstanding - 1
  if outstanding == 0 and now() >= deadline then
    io.write(string.format("BENCH_DRAINED %.6f\n", now() - started))
    io.stdout:flush()
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses") or {}) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"responses":%d,"statuses":{%s},"socket_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, table.concat(parts, ","), errors.connect + errors.read + errors.write,
    errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
