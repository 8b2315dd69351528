-- reap_v2: settle expired, unsettled leases of one tag at their full amount and return them. Uses
-- lib_counters (prepended). v2: the rule of settle_v2 (a zero-amount hold still moves its counter's window
-- end; a counter that never expires is made persistent).
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

local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[5])
for _, id in ipairs(ids) do
  local lk = ARGV[3] .. id
  local v = redis.call('HMGET', lk, 'd', 'h', 'x')
  redis.call('ZREM', KEYS[1], id)
  if v[1] then
    local order, acc = lease_deltas(cjson.decode(v[2]))
    apply_all(order, acc, now, grace)
    redis.call('DEL', lk)
    out[#out + 1] = v[1]
    out[#out + 1] = v[3]
  end
end
return out
