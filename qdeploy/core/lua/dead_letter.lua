-- Move one message out of flight into the dead letters, with its record and result.
-- KEYS: inflight, msgs, dlv, dead. ARGV: ns, id, record, result|'', ttl, maxlen
-- include: set_result
redis.call('LREM', KEYS[1], 1, ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
if ARGV[4] ~= '' then set_result(k_result(ARGV[1], ARGV[2]), ARGV[4], ARGV[5]) end
return 1
