-- settle_v2: close a lease, charging what was used and releasing what was held. Uses lib_counters
-- (prepended). v2: a counter held twice by one lease is charged once (v1 charged it once per hold).
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
-- The counter keys come from the lease hash (field h, written by reserve_v1/v2 from its own KEYS): they
-- are not in KEYS because settle's caller only knows the lease id. They carry the same hash tag as KEYS[1]
-- (the caller's counter keys start with the team's tag), so they live in the same cluster slot.

local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[3])

local h = redis.call('HGET', KEYS[1], 'h')
if not h then
  return 0
end
local charges = {}
for i = 4, #ARGV, 2 do
  charges[ARGV[i]] = ARGV[i + 1]
end
local order, acc = lease_deltas(cjson.decode(h), charges)
apply_all(order, acc, now, grace)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
