-- Redis Cluster: a unique send (see publish_unique.lua). The key is held per queue, in the
-- queue's slot: a hash key -> id, with the time it is held until in a sorted set (lazily expired).
-- KEYS: msgs, target (eta zset if ARGV[3] ~= '' else queue list), unique, unique_expiry.
-- ARGV: id, body, eta|'', seconds, key. Returns the holder's id, or false when published.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 100)
if #stale > 0 then
  redis.call('HDEL', KEYS[3], unpack(stale))
  redis.call('ZREM', KEYS[4], unpack(stale))
end
local first = redis.call('HGET', KEYS[3], ARGV[5])
if first then return first end
redis.call('HSET', KEYS[3], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[4], string.format('%.6f', now + tonumber(ARGV[4])), ARGV[5])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else redis.call('LPUSH', KEYS[2], ARGV[1]) end
return false
