-- Redis Cluster: beat_dispatch.lua, where the queue is in another slot than beat's keys (hash
-- tag {ns:beat}): the run's message goes to beat's outbox with the decision, and the caller
-- delivers it from there at most once (cluster_publish_once.lua; run ids are the same for
-- every beat that computes the same run), then clears it. A new leader delivers what is left.
-- KEYS: lock, last, runs, outbox. ARGV: token, name, slot_us, anchor_us, record JSON, id|'', entry|''
-- -> 1 dispatched (or skip recorded), 0 slot already done, -1 not the lock holder
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1')
local slot, anchor = tonumber(ARGV[3]), tonumber(ARGV[4])
if last >= slot then return 0 end
if anchor < slot then anchor = slot end
redis.call('HSET', KEYS[2], ARGV[2], string.format('%.0f', anchor))
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[4], ARGV[6], ARGV[7]) end
return 1
