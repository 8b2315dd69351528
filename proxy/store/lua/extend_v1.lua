-- extend_v1: move a lease's expiry (long streams keep their lease alive).
--
-- KEYS[1]   lease hash   qg:{tag}:l:<lease id>
-- KEYS[2]   lease zset   qg:{tag}:leases
-- ARGV[1]   new expiry, ms
-- ARGV[2]   lease id
-- ARGV[3]   new expiry as the caller's float (opaque)
--
-- Returns 1 when extended, 0 when the lease is unknown (settled or reaped).

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'x', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
