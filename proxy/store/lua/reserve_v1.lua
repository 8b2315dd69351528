-- reserve_v1: admit every hold of a lease or none (quotagate store contract, proxy/store/base.py).
--
-- KEYS[1]      lease hash   qg:{tag}:l:<lease id>   fields d (lease JSON), h (holds for Lua), e (expiry ms), x
-- KEYS[2]      lease zset   qg:{tag}:leases         member lease id, score expiry ms
-- KEYS[3..n+2] counter hashes qg:c:<counter key>    fields used, reserved, exp (window end ms, 0 = never)
-- ARGV[1]      now, ms, from the caller's clock (all expiry decisions use it, never Redis' clock)
-- ARGV[2]      lease expiry, ms
-- ARGV[3]      lease id
-- ARGV[4]      lease JSON (opaque here, returned by reap)
-- ARGV[5]      holds JSON for settle/reap: [[counter redis key, amount, window end ms, reap commit], ...]
--              (strings; reap commit is 0 for slots that are only ever released)
-- ARGV[6]      lease expiry as the caller's float (opaque)
-- ARGV[7]      counter GC grace, ms
-- ARGV[8..]    per hold, in KEYS order: limit (< 0 = unlimited), amount, window end ms
--
-- Returns {0, used1, reserved1, used2, reserved2, ...} when admitted: each hold's counter just after
-- (just {0} when the lease already exists: a retried reserve is a no-op),
-- {1, i, used, reserved} when hold i (1-based) does not fit; nothing is written then.
--
-- A counter past its window end reads as zero and is restarted by the next write. The Redis TTL is
-- only garbage collection: PEXPIRE (window end - caller's now) + grace, relative to the caller's clock,
-- so a test clock or a skewed replica never makes Redis delete a counter that is still live.
-- Stored values change only by HINCRBY/HSET of integer strings; comparisons are exact below 2^53, and a
-- number computed here goes back to Redis through %.0f (newer Redis render big Lua numbers as 1e+12).

local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[7])

local function live(k)
  local v = redis.call('HMGET', k, 'used', 'reserved', 'exp')
  local exp = tonumber(v[3]) or 0
  if not v[1] or (exp > 0 and now >= exp) then
    return 0, 0, false
  end
  return tonumber(v[1]), tonumber(v[2]) or 0, true
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end

local n = #KEYS - 2
local pending = {}
for i = 1, n do
  local k = KEYS[i + 2]
  local base = 8 + (i - 1) * 3
  local limit = tonumber(ARGV[base])
  local amount = tonumber(ARGV[base + 1])
  local used, reserved = live(k)
  local ahead = pending[k] or 0
  if limit >= 0 and used + reserved + ahead + amount > limit then
    return {1, i, used, reserved}
  end
  pending[k] = ahead + amount
end

local after = {0}
for i = 1, n do
  local k = KEYS[i + 2]
  local base = 8 + (i - 1) * 3
  local amount = ARGV[base + 1]
  local exp = ARGV[base + 2]
  local _, _, alive = live(k)
  if alive then
    redis.call('HINCRBY', k, 'reserved', amount)
    redis.call('HSET', k, 'exp', exp)
  else
    redis.call('DEL', k)
    redis.call('HSET', k, 'used', 0, 'reserved', amount, 'exp', exp)
  end
  local e = tonumber(exp)
  if e > 0 then
    redis.call('PEXPIRE', k, string.format('%.0f', math.max(e - now, 0) + grace))
  else
    redis.call('PERSIST', k)
  end
  local v = redis.call('HMGET', k, 'used', 'reserved')
  after[#after + 1] = tonumber(v[1]) or 0
  after[#after + 1] = tonumber(v[2]) or 0
end

redis.call('HSET', KEYS[1], 'd', ARGV[4], 'h', ARGV[5], 'e', ARGV[2], 'x', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return after
