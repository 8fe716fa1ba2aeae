-- wrk script for the benchmarks: cycle through the request paths listed (one per line) in the file named by
-- $BENCH_PATHS, and print one JSON line of exact figures at the end (parsed by benchmarks/measure.py).
local paths = {}
local n = 0

function init(args)
  local file = assert(io.open(os.getenv("BENCH_PATHS"), "r"))
  for line in file:lines() do
    if #line > 0 then
      paths[#paths + 1] = wrk.format("GET", line)
    end
  end
  file:close()
end

function request()
  n = n % #paths + 1
  return paths[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
