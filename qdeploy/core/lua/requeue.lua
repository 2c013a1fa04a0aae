-- Included by reserve, requeue_consumer and recover_dead (`-- include: requeue`).
-- Give back every id in-flight for one consumer, at the head of its queue. Nothing vanishes: a
-- body without a readable queue is dead-lettered, and so is an id without a body, unless its
-- result says it finished (a copy recovered while a stopped node still ran it, which acked it
-- since). Expects locals ns, cid, inflight, msgs; leaves `moved`.
local moved = 0
while true do
  local id = redis.call('RPOP', inflight)
  if not id then break end
  local body = redis.call('HGET', msgs, id)
  if body then
    local ok, env = pcall(cjson.decode, body)
    if ok and type(env) == 'table' and type(env['queue']) == 'string' then
      redis.call('RPUSH', k_queue(ns, env['queue']), id)
    else
      redis.call('LPUSH', k_dead(ns), cjson.encode({id = id, body = body, queue = false,
        reason = 'malformed message found in-flight of dead consumer ' .. cid}))
      redis.call('HDEL', msgs, id)
      redis.call('HDEL', k_dlv(ns), id)
    end
    moved = moved + 1
  else
    local record, finished = redis.call('GET', k_result(ns, id)), false
    if record then
      local ok, rec = pcall(cjson.decode, record)
      finished = ok and type(rec) == 'table' and (rec['state'] == 'SUCCESS' or rec['state'] == 'FAILURE'
        or rec['state'] == 'REVOKED')
    end
    if not finished then
      redis.call('LPUSH', k_dead(ns), cjson.encode({id = id, body = false, queue = false,
        reason = 'no envelope stored for this id (found in-flight of consumer ' .. cid .. ')'}))
      redis.call('HDEL', k_dlv(ns), id)
    end
  end
end
