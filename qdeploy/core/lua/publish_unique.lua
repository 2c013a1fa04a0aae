-- A unique send: publish one message unless a message with the same key is still queued or
-- running. KEYS: msgs, target (eta zset if ARGV[3] ~= '' else queue list), unique key.
-- ARGV: id, body, eta|'', seconds. Returns the first message's id, or false when published.
local first = redis.call('GET', KEYS[3])
if first then return first end
redis.call('SET', KEYS[3], ARGV[1], 'PX', math.max(1, math.floor(tonumber(ARGV[4]) * 1000)))
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else redis.call('LPUSH', KEYS[2], ARGV[1]) end
return false
