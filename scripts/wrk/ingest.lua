-- POST one pre-generated Bandwidth callback per request, walking an NDJSON file of bodies (one
-- JSON body per line), so every request is a different event.
--
--   wrk -t1 -c64 -d10s --latency -s scripts/wrk/ingest.lua http://127.0.0.1:PORT -- BODIES NTHREADS
--
-- Thread i of N sends bodies i+1, i+1+N, ... (no two threads send the same body). When a thread
-- runs out it wraps around (counted in `wrapped`: those requests are duplicates).
-- With BENCH_WRK_RESULT set, done() writes per-thread counts there: the requests sent, the
-- responses by status, the 200s answered `"duplicate":true`, and (BENCH_WRK_SEQS=1) every seq
-- acknowledged with a 200, so the caller can check each one is in the database.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local bodies, n, i, step = {}, 0, 0, 1
local headers = { ["Content-Type"] = "application/json" }
local keep_seqs = false
sent, wrapped, dups, codes, seqs = 0, 0, 0, {}, {}

function init(args)
  step = tonumber(args[2] or "1")
  for line in io.lines(args[1]) do
    n = n + 1
    bodies[n] = line
  end
  i = tid or 0
  keep_seqs = os.getenv("BENCH_WRK_SEQS") == "1"
end

function request()
  if i >= n then
    wrapped = wrapped + 1
  end
  local body = bodies[(i % n) + 1]
  i = i + step
  sent = sent + 1
  return wrk.format("POST", "/callbacks", headers, body)
end

function response(status, hdrs, body)
  codes[status] = (codes[status] or 0) + 1
  if status == 200 then
    if keep_seqs then
      local s = string.match(body, '"seq":(%d+)')
      if s then
        seqs[#seqs + 1] = s
      end
    end
    if string.find(body, '"duplicate":true', 1, true) then
      dups = dups + 1
    end
  end
end

function done(summary, latency, requests)
  local path = os.getenv("BENCH_WRK_RESULT")
  if not path then
    return
  end
  local f = assert(io.open(path, "w"))
  for _, t in ipairs(threads) do
    f:write(string.format("sent %d\nwrapped %d\ndups %d\n", t:get("sent"), t:get("wrapped"),
      t:get("dups")))
    for code, count in pairs(t:get("codes")) do
      f:write(string.format("code %d %d\n", code, count))
    end
    f:write("seqs ", table.concat(t:get("seqs"), " "), "\n")
  end
  f:close()
end
