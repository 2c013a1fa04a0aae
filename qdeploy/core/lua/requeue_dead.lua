-- Put one dead letter back at the head of its queue. 1 if requeued, 0 if already gone.
-- KEYS: dead, msgs, dlv. ARGV: ns, raw record, id, queue, body.
if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('DEL', k_result(ARGV[1], ARGV[3]))
redis.call('LPUSH', k_queue(ARGV[1], ARGV[4]), ARGV[3])
return 1
