-- settle_v1: close a lease, charging what was used and releasing what was held.
--
-- KEYS[1]   lease hash   qg:{tag}:l:<lease id>
-- KEYS[2]   lease zset   qg:{tag}:leases
-- ARGV[1]   now, ms, from the caller's clock
-- ARGV[2]   lease id
-- ARGV[3]   counter GC grace, ms
-- ARGV[4..] pairs: counter redis key, charge (integer >= 0)
--
-- Returns 1 when settled, 0 when the lease is unknown (already settled or reaped): nothing changes then,
-- so settling twice never charges twice.
--
-- The counter keys come from the lease hash (field h, written by reserve_v1 from its own KEYS): they are
-- not in KEYS because settle's caller only knows the lease id. They carry the same hash tag as KEYS[1]
-- (the caller's counter keys start with the team's tag), so they live in the same cluster slot.

local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[3])

local function charge(k, amount, exp, used)
  local e = tonumber(exp)
  if e > 0 and now >= e then
    return -- the window is over: the counter reads as zero whatever we write
  end
  local v = redis.call('HMGET', k, 'used', 'exp')
  local cur = tonumber(v[2]) or 0
  if not v[1] or (cur > 0 and now >= cur) then
    redis.call('DEL', k)
    redis.call('HSET', k, 'used', used, 'reserved', 0, 'exp', exp)
  else
    redis.call('HINCRBY', k, 'used', used)
    if tonumber(amount) > 0 then
      local r = redis.call('HINCRBY', k, 'reserved', string.format('%.0f', -tonumber(amount)))
      if r < 0 then
        redis.call('HSET', k, 'reserved', 0)
      end
    end
    redis.call('HSET', k, 'exp', exp)
  end
  if e > 0 then
    redis.call('PEXPIRE', k, string.format('%.0f', math.max(e - now, 0) + grace))
  end
end

local h = redis.call('HGET', KEYS[1], 'h')
if not h then
  return 0
end
local charges = {}
for i = 4, #ARGV, 2 do
  charges[ARGV[i]] = ARGV[i + 1]
end
for _, hold in ipairs(cjson.decode(h)) do
  charge(hold[1], hold[2], hold[3], charges[hold[1]] or '0')
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
