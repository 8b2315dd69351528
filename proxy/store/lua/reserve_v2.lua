-- reserve_v2: admit every hold of a lease or none (quotagate store contract, proxy/store/base.py).
-- Uses lib_counters (prepended). v2: one write per distinct counter (v1 restarted a dead counter once
-- per hold) and a hold whose window has ended is admitted but never written; the fields stored for
-- settle and reap are those of v1, so either version settles the other's leases.
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

local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[7])

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end

local n = #KEYS - 2
local order, acc = {}, {}
for i = 1, n do
  local k = KEYS[i + 2]
  local base = 8 + (i - 1) * 3
  local limit = tonumber(ARGV[base])
  local amount = tonumber(ARGV[base + 1])
  local d = acc[k]
  if not d then
    local used, reserved = live(k, now)
    d = {used, reserved, 0, 0} -- the counter as read, what this lease adds, its last window end
    acc[k] = d
    order[#order + 1] = k
  end
  if not fits(limit, d[1], d[2], d[3], amount) then
    return {1, i, d[1], d[2]}
  end
  d[3] = d[3] + amount
  d[4] = tonumber(ARGV[base + 2])
end

for _, k in ipairs(order) do
  local d = acc[k]
  apply(k, 0, d[3], d[4], now, grace)
end

local after = {0}
for i = 1, n do
  local used, reserved = live(KEYS[i + 2], now)
  after[#after + 1] = used
  after[#after + 1] = reserved
end

redis.call('HSET', KEYS[1], 'd', ARGV[4], 'h', ARGV[5], 'e', ARGV[2], 'x', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return after
