-- One message: store its body and queue its id (or schedule it), atomically.
-- KEYS: msgs, target (eta zset if ARGV[3] ~= '' else queue list). ARGV: id, body, eta|''
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else redis.call('LPUSH', KEYS[2], ARGV[1]) end
return 1
