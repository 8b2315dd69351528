-- revoke_key_v1: mark a runtime API key revoked.
--
-- KEYS[1]  hash qg:keys: sha256 -> record JSON written by RedisStore.put_key, whose last member is
--          always "revoked" (orjson, no spaces), so the flag can be flipped without re-encoding floats
-- ARGV[1]  sha256 hex digest
--
-- Returns 1 when the key exists (revoked now or already), 0 otherwise.

local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then
  return 0
end
local revoked = string.gsub(v, ',"revoked":false}$', ',"revoked":true}')
redis.call('HSET', KEYS[1], ARGV[1], revoked)
return 1
