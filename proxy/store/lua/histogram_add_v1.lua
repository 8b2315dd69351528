-- histogram_add_v1: add counts to a histogram's buckets (proxy/observed.py); an expired one starts afresh.
--
-- KEYS[1]   histogram hash   qg:h:<key>   fields: bucket index -> count, and exp (expiry, ms)
-- ARGV[1]   now, ms (the caller's clock)
-- ARGV[2]   expiry, ms
-- ARGV[3]   grace, ms: the Redis TTL past the expiry (garbage collection only; reads check exp)
-- ARGV[4..] bucket, count pairs
--
-- Returns 1 when written, 0 when the expiry has already passed (nothing is written).

local now = tonumber(ARGV[1])
local exp = tonumber(ARGV[2])
if exp <= now then
  return 0
end
local old = tonumber(redis.call('HGET', KEYS[1], 'exp') or '0')
if old ~= 0 and old <= now then
  redis.call('DEL', KEYS[1])
end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'exp', ARGV[2])
redis.call('PEXPIRE', KEYS[1], exp - now + tonumber(ARGV[3]))
return 1
