-- GET a path picked at random from a file of paths (one per line), e.g. /calls/c-... ids or
-- /calls?outcome=busy&cursor=N pages.
--
--   wrk -t1 -c64 -d10s --latency -s scripts/wrk/get_random.lua http://127.0.0.1:PORT -- PATHS NTHREADS
--
-- With BENCH_WRK_RESULT set, done() writes the requests sent and the responses by status there.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local paths, n = {}, 0
sent, wrapped, dups, codes = 0, 0, 0, {}

function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    paths[n] = line
  end
  math.randomseed(12345 + 7919 * (tid or 0))
end

function request()
  sent = sent + 1
  return wrk.format("GET", paths[math.random(n)])
end

function response(status, hdrs, body)
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  local path = os.getenv("BENCH_WRK_RESULT")
  if not path then
    return
  end
  local f = assert(io.open(path, "w"))
  for _, t in ipairs(threads) do
    f:write(string.format("sent %d\nwrapped %d\ndups %d\n", t:get("sent"), 0, 0))
    for code, count in pairs(t:get("codes")) do
      f:write(string.format("code %d %d\n", code, count))
    end
  end
  f:close()
end
