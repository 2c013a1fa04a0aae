-- Redis Cluster: put one dead letter back at the head of its queue (requeue_dead.lua; its old
-- result, in another slot, is deleted by the caller). 1 if requeued, 0 if already gone.
-- KEYS: dead, msgs, dlv, queue. ARGV: raw record, id, body.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('LPUSH', KEYS[4], ARGV[2])
return 1
