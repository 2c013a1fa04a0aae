-- Give up the leader lock if it is ours. KEYS: lock. ARGV: token.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
