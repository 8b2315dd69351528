-- ledger_v2: append a batch of ledger records to the stream, once, with ids derived from the records' own
-- timestamps.
--
-- KEYS[1]  stream qg:ledger
-- KEYS[2]  batch marker {qg:ledger}:b:<digest of the batch's request ids> (the stream's cluster slot)
-- ARGV[1]  marker lifetime, ms
-- ARGV[2]  the stream's max length (XADD MAXLEN ~: trimmed a whole node at a time), 0 = unbounded
-- ARGV     then per record: ts ms, number of fields, then field, value pairs
--
-- A batch whose marker exists was written already (a retry after a lost reply, or a spill file replayed
-- again after a crash): nothing is added. The marker is set after the records, so a script that fails
-- midway is retried whole: a duplicate at worst, never a loss.
--
-- Each record gets the id max(ts, last id's ms)-seq: ids stay strictly increasing even when records arrive
-- out of order, and id >= ts always holds, so XRANGE from `since` finds every record with ts >= since
-- whatever the Redis server's clock says. Entries are trimmed only past ARGV[2] (``ledger_stream_max_len``),
-- oldest first, or once copied into a PostgreSQL ledger (``ledger:``, at startup, by XTRIM MINID).
-- Returns the number of records added.

if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local ms, seq = -1, 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local a, b = string.match(last[1][1], '^(%d+)-(%d+)$')
  ms, seq = tonumber(a), tonumber(b)
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  -- trimmed empty: XADD still refuses ids up to the last one it generated
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for k = 1, #info, 2 do
    if info[k] == 'last-generated-id' then
      local a, b = string.match(info[k + 1], '^(%d+)-(%d+)$')
      ms, seq = tonumber(a), tonumber(b)
    end
  end
end
local cap = tonumber(ARGV[2])
local i, n = 3, 0
while i <= #ARGV do
  local ts = tonumber(ARGV[i])
  local nf = tonumber(ARGV[i + 1])
  if ts > ms then
    ms, seq = ts, 0
  else
    seq = seq + 1
  end
  if ms == 0 and seq == 0 then
    seq = 1 -- 0-0 is not a valid stream id
  end
  local cmd = {'XADD', KEYS[1]}
  if cap > 0 then
    cmd[3], cmd[4], cmd[5] = 'MAXLEN', '~', ARGV[2]
  end
  cmd[#cmd + 1] = string.format('%.0f-%.0f', ms, seq)
  for j = i + 2, i + 1 + 2 * nf do
    cmd[#cmd + 1] = ARGV[j]
  end
  redis.call(unpack(cmd))
  i = i + 2 + 2 * nf
  n = n + 1
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return n
