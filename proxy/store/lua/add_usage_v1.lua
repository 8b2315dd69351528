-- add_usage_v1: used += amount on each counter, unconditionally (reconciliation after an outage).
-- Uses lib_counters (prepended).
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
  apply(KEYS[i], tonumber(ARGV[1 + 2 * i]), 0, tonumber(ARGV[2 + 2 * i]), now, grace)
end
return #KEYS
