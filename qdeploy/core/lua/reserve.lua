-- Ack the previous message (if any), then reserve the next one: one round trip per task.
-- KEYS: inflight, msgs, dlv, queue lists..., eta zsets...
-- ARGV: ns, ack_id|'', ack_result|'', result_ttl, nqueues, cid, owner, track('1'|'0'), claimed|'',
--       leave('1'|'')
-- `claimed`: an id that BLMOVE already moved from the first queue into this consumer's in-flight
-- list (the idle wait, see Broker.wait): it gets the same bookkeeping as an id LMOVEd here.
-- An empty reserve registers the consumer, so an id BLMOVEd right after is always recoverable.
-- `leave`: after the ack, requeue anything still held and unregister (a consumer's last call).
-- include: set_result
local ns, ttl = ARGV[1], tonumber(ARGV[4])
if ARGV[2] ~= '' then
  redis.call('LREM', KEYS[1], 1, ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  if ARGV[3] ~= '' then set_result(k_result(ns, ARGV[2]), ARGV[3], ttl) end
end
if ARGV[10] == '1' then
  local cid, inflight, msgs = ARGV[6], KEYS[1], KEYS[2]
  -- include: requeue
  redis.call('HDEL', k_consumers(ns), cid)
  return false
end
local n = tonumber(ARGV[5])
if n == 0 then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function hit(id, i)
  redis.call('HSET', k_consumers(ns), ARGV[6], ARGV[7])
  local body = redis.call('HGET', KEYS[2], id)
  local count = redis.call('HINCRBY', KEYS[3], id, 1)
  local revoked = redis.call('EXISTS', k_revoked(ns, id))
  if body and ARGV[8] == '1' then
    local ok, env = pcall(cjson.decode, body)
    if ok and type(env) == 'table' and env['ignore_result'] ~= true then
      set_result(k_result(ns, id), cjson.encode({state = 'RECEIVED', worker = ARGV[6],
        date_done = false, task = env['task'], received = now}), ttl)
    end
  end
  return {id, body, count, revoked, i}
end
if ARGV[9] and ARGV[9] ~= '' then return hit(ARGV[9], 1) end
for i = 1, n do
  local q, z = KEYS[3 + i], KEYS[3 + n + i]
  local due = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100)
  if #due > 0 then
    for _, id in ipairs(due) do redis.call('LPUSH', q, id) end
    redis.call('ZREM', z, unpack(due))
  end
  local id = redis.call('LMOVE', q, KEYS[1], 'RIGHT', 'LEFT')
  if id then return hit(id, i) end
end
redis.call('HSET', k_consumers(ns), ARGV[6], ARGV[7])
return false
