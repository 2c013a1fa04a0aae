-- Redis Cluster: give back what one consumer holds in one queue (a reaped child, a consumer
-- restarting under its name, leaving, or a dead node's: `owner` given, only while the registry
-- still names that owner and the owner's heartbeat copy in this slot has expired: the owner may
-- have beaten since the caller looked, and this check is atomic with the requeue). At the head
-- of the queue, so it runs next. An id whose body is gone is returned to the caller, which looks
-- at its result (another slot) and dead-letters it unless it finished (a copy recovered while a
-- stopped node still ran it, and acked since).
-- KEYS: inflight, msgs, dlv, queue, consumers, the owner's heartbeat copy in this slot (read only
-- when owner is given). ARGV: cid, unregister('1'|'0'), owner|''
-- -> {moved, id without a body, ...}
if ARGV[3] ~= '' then
  if redis.call('HGET', KEYS[5], ARGV[1]) ~= ARGV[3] then return {0} end
  if redis.call('EXISTS', KEYS[6]) == 1 then return {0} end
end
local out = {0}
while true do
  local id = redis.call('RPOP', KEYS[1])
  if not id then break end
  if redis.call('HEXISTS', KEYS[2], id) == 1 then
    redis.call('RPUSH', KEYS[4], id)
    out[1] = out[1] + 1
  else
    redis.call('HDEL', KEYS[3], id)
    out[#out + 1] = id
  end
end
if ARGV[2] == '1' then redis.call('HDEL', KEYS[5], ARGV[1]) end
return out
