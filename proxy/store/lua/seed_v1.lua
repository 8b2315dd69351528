-- seed_v1: after a store loss, set one hash tag's counters from the ledger, once (proxy/seed.py).
-- Uses lib_counters (prepended).
--
-- KEYS[1]      seed marker   qg:{tag}:seeded   STRING: who seeded, and when (the tag's cluster slot)
-- KEYS[2..n+1] counter hashes qg:c:<counter key>  fields used, reserved, exp (window end ms, 0 = never)
-- ARGV[1]      now, ms, from the caller's clock
-- ARGV[2]      counter GC grace, ms
-- ARGV[3]      the marker's value
-- ARGV[4..]    per counter, in KEYS order: what the ledger says it was charged, window end ms
--
-- When the marker exists the tag is seeded already (by another replica, or before): nothing is written,
-- so N replicas seeding at once write once, and a replay never adds. Otherwise every counter's used is set
-- to max(used, the ledger's): what was charged since the loss and is in the ledger already is counted once,
-- what is not in the ledger yet is kept; reserved (leases taken since the loss) is left as it is. Then the
-- marker is set, with no expiry: only a new loss removes it.
-- Returns {0} when seeded already, else {1, how many counters were raised}.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end
local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[2])
local raised = 0
for i = 2, #KEYS do
  local want = tonumber(ARGV[2 * i])
  local exp = tonumber(ARGV[2 * i + 1])
  local used = live(KEYS[i], now)
  if want > used and not ended(exp, now) then
    apply(KEYS[i], want - used, 0, exp, now, grace)
    raised = raised + 1
  end
end
redis.call('SET', KEYS[1], ARGV[3])
return {1, raised}
