-- lib_counters: the counter rule of proxy/store/rules.py, in Lua. RedisStore prepends this file to the
-- text of every script it loads, so the rule is written once per language; it defines locals only
-- (Redis refuses scripts that create globals).
--
-- A counter hash qg:c:<key> holds used, reserved, exp (window end ms, 0 = never); it reads as zero when
-- missing or when 0 < exp <= now. A write applies one delta per distinct key to the counter as it reads:
--
--   used += du;  reserved = max(0, reserved + dr);  exp = the delta's window end
--
-- and is skipped when the delta's own window has ended (it could only create a counter that reads as
-- zero, or cut a live one short). The Redis TTL is garbage collection only: PEXPIRE (window end - the
-- caller's now) + grace, so a test clock or a skewed replica never makes Redis delete a live counter.
-- Stored values change by HINCRBY (exact to 2^63); Lua arithmetic is exact below 2^53, and a number goes
-- back to Redis through %.0f (newer Redis render big Lua numbers as 1e+12).

local function ended(exp, now)
  return exp > 0 and now >= exp
end

local function int(x)
  return string.format('%.0f', x)
end

-- used, reserved of counter k as it reads at now, and whether it is live
local function live(k, now)
  local v = redis.call('HMGET', k, 'used', 'reserved', 'exp')
  if not v[1] or ended(tonumber(v[3]) or 0, now) then
    return 0, 0, false
  end
  return tonumber(v[1]), tonumber(v[2]) or 0, true
end

-- admission of one hold: ahead is what earlier holds of the same lease put on the counter
local function fits(limit, used, reserved, ahead, amount)
  return limit < 0 or used + reserved + ahead + amount <= limit
end

local function apply(k, du, dr, exp, now, grace)
  if ended(exp, now) then
    return
  end
  local _, _, alive = live(k, now)
  if alive then
    if du ~= 0 then
      redis.call('HINCRBY', k, 'used', int(du))
    end
    if dr ~= 0 and redis.call('HINCRBY', k, 'reserved', int(dr)) < 0 then
      redis.call('HSET', k, 'reserved', 0)
    end
    redis.call('HSET', k, 'exp', int(exp))
  else
    redis.call('DEL', k)
    redis.call('HSET', k, 'used', int(du), 'reserved', int(math.max(dr, 0)), 'exp', int(exp))
  end
  if exp > 0 then
    redis.call('PEXPIRE', k, int(math.max(exp - now, 0) + grace))
  else
    redis.call('PERSIST', k)
  end
end

-- The deltas that close a lease, from its holds as reserve stored them (field h): a list of
-- {counter redis key, amount, window end ms, reap commit} strings. Returns the distinct keys in order and
-- key -> {du, dr, exp}: every hold releases its amount; exp is the key's last hold's. charges (key ->
-- amount) is charged once per key (settle); without it each hold commits its reap commit (reap: the
-- amount, 0 for slots; absent in leases written before the field existed, which commit their amount).
local function lease_deltas(holds, charges)
  local order, acc = {}, {}
  for _, h in ipairs(holds) do
    local k = h[1]
    local d = acc[k]
    if not d then
      d = {charges and tonumber(charges[k] or 0) or 0, 0, 0}
      acc[k] = d
      order[#order + 1] = k
    end
    if not charges then
      d[1] = d[1] + tonumber(h[4] or h[2])
    end
    d[2] = d[2] - tonumber(h[2])
    d[3] = tonumber(h[3])
  end
  return order, acc
end

local function apply_all(order, acc, now, grace)
  for _, k in ipairs(order) do
    local d = acc[k]
    apply(k, d[1], d[2], d[3], now, grace)
  end
end

-- end of lib_counters
