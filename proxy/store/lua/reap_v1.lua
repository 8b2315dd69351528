-- reap_v1: settle expired, unsettled leases of one tag at their full amount and return them.
--
-- KEYS[1]   lease zset   qg:{tag}:leases
-- ARGV[1]   lease cutoff, ms: leases whose expiry <= this are reaped
-- ARGV[2]   now, ms, from the caller's clock (counter window expiry)
-- ARGV[3]   lease key prefix qg:{tag}:l:
-- ARGV[4]   counter GC grace, ms
-- ARGV[5]   at most this many leases per call (bounds the script's run time; the caller loops)
--
-- Returns a flat list: lease JSON, lease expiry (caller's float), ... for each reaped lease.
--
-- Lease keys are built here as ARGV[3] .. member and counter keys are read from each lease: which leases
-- expired is only known inside the script. Both carry KEYS[1]'s hash tag, so they share its cluster slot.

local now = tonumber(ARGV[2])
local grace = tonumber(ARGV[4])

-- amount: what the lease held (released); commit: what is charged (= amount, or 0 for slots; absent in
-- leases written before the field existed, which then commit their amount)
local function charge(k, amount, exp, commit)
  commit = commit or amount
  local e = tonumber(exp)
  if e > 0 and now >= e then
    return
  end
  local v = redis.call('HMGET', k, 'used', 'exp')
  local cur = tonumber(v[2]) or 0
  if not v[1] or (cur > 0 and now >= cur) then
    redis.call('DEL', k)
    redis.call('HSET', k, 'used', commit, 'reserved', 0, 'exp', exp)
  elseif tonumber(amount) > 0 then
    redis.call('HINCRBY', k, 'used', commit)
    local r = redis.call('HINCRBY', k, 'reserved', string.format('%.0f', -tonumber(amount)))
    if r < 0 then
      redis.call('HSET', k, 'reserved', 0)
    end
    redis.call('HSET', k, 'exp', exp)
  end
  if e > 0 then
    redis.call('PEXPIRE', k, string.format('%.0f', math.max(e - now, 0) + grace))
  end
end

local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[5])
for _, id in ipairs(ids) do
  local lk = ARGV[3] .. id
  local v = redis.call('HMGET', lk, 'd', 'h', 'x')
  redis.call('ZREM', KEYS[1], id)
  if v[1] then
    for _, hold in ipairs(cjson.decode(v[2])) do
      charge(hold[1], hold[2], hold[3], hold[4])
    end
    redis.call('DEL', lk)
    out[#out + 1] = v[1]
    out[#out + 1] = v[3]
  end
end
return out
