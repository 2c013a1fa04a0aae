-- Ack this delivery and store the next attempt (in the ETA set when it has an eta).
-- KEYS: inflight, msgs, dlv, target (eta zset if ARGV[4] ~= '' else queue list)
-- ARGV: ns, id, new body, eta|'', result|'', ttl
-- include: set_result
redis.call('LREM', KEYS[1], 1, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[2])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
else redis.call('LPUSH', KEYS[4], ARGV[2]) end
if ARGV[5] ~= '' then set_result(k_result(ARGV[1], ARGV[2]), ARGV[5], ARGV[6]) end
return 1
