-- add_usage_v1: used += amount on each counter, unconditionally (reconciliation after an outage).
--
-- KEYS[1..n]  counter hashes qg:c:<counter key>
-- ARGV[1]     now, ms, from the caller's clock
-- ARGV[2]     counter GC grace, ms
-- ARGV[3..]   per key, in KEYS order: amount, window end ms (0 = never)
--
-- A counter whose window has ended is left alone (it reads as zero anyway).

local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[2])
for i = 1, #KEYS do
  local k = KEYS[i]
  local amount = ARGV[1 + 2 * i]
  local exp = ARGV[2 + 2 * i]
  local e = tonumber(exp)
  if not (e > 0 and now >= e) then
    local v = redis.call('HMGET', k, 'used', 'exp')
    local cur = tonumber(v[2]) or 0
    if not v[1] or (cur > 0 and now >= cur) then
      redis.call('DEL', k)
      redis.call('HSET', k, 'used', amount, 'reserved', 0, 'exp', exp)
    else
      redis.call('HINCRBY', k, 'used', amount)
      redis.call('HSET', k, 'exp', exp)
    end
    if e > 0 then
      redis.call('PEXPIRE', k, string.format('%.0f', math.max(e - now, 0) + grace))
    else
      redis.call('PERSIST', k)
    end
  end
end
return #KEYS
