-- wrk script: spread requests over every MovieLens user, with ~2% unknown
-- ids (cold-start fallbacks), so no single cached user is measured.
local users = tonumber(os.getenv("RECSYS_BENCH_USERS") or "943")
local seeded = false
request = function()
  if not seeded then
    -- One seed per wrk thread (each thread has its own Lua state).
    math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
    seeded = true
  end
  local u
  if math.random(100) <= 2 then
    u = 1000000 + math.random(1000000)
  else
    u = math.random(users)
  end
  return wrk.format("GET", "/recommend/" .. u)
end
