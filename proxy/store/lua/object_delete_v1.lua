-- object_delete_v1: mark an object record deleted, keeping its TTL; never create one.
--
-- KEYS[1]  hash qg:o:<kind>:<id> written by RedisStore.put_object (fields t, p, c, d)
-- ARGV[1]  retention cutoff, epoch seconds (the caller's clock): a record created at or before it is gone
--
-- Returns 1 when the record exists (deleted now or already), 0 otherwise.

local created = redis.call('HGET', KEYS[1], 'c')
if not created or tonumber(created) <= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'd', '1')
return 1
