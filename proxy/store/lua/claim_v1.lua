-- claim_v1: claim a key once until it expires, by the caller's clock (RedisStore.claim; proxy/notify.py).
--
-- KEYS[1]  string qg:n:<claim key>: the expiry (ms) of the claim in force
-- ARGV[1]  now, ms (the caller's injected clock, never the server's)
-- ARGV[2]  the claim's expiry, ms
-- ARGV[3]  its Redis TTL, ms: garbage collection only (expiry minus now, plus the counters' grace)
--
-- Returns 1 to the one caller that claims it (none in force, or the one in force has expired), else 0.

local held = redis.call('GET', KEYS[1])
if held and tonumber(held) > tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
