-- Redis Cluster: deliver one message of an outbox (a chain's next step, a callback, a chord's
-- body, a beat run) to its queue, at most once per id: an outbox entry delivered again (its
-- deliverer died before clearing it, or a sweep took it over) finds the id in `once`.
-- KEYS: msgs, target (eta zset if ARGV[3] ~= '' else queue list), once. ARGV: id, body, eta|'', keep_s
-- -> 1 published, 0 already delivered
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[3], string.format('%.6f', now + tonumber(ARGV[4])), ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else redis.call('LPUSH', KEYS[2], ARGV[1]) end
return 1
