-- Ack the previous message (if any), then reserve the next one: one round trip per task.
-- KEYS: inflight, msgs, dlv, queue lists..., eta zsets...
-- ARGV: ns, ack_id|'', ack_result|'', result_ttl, nqueues, cid, owner, track('1'|'0'), claimed|'',
--       leave('1'|''), rate limits|'', [follow-up ops (see followups.lua)]
-- `claimed`: an id that BLMOVE already moved from the first queue into this consumer's in-flight
-- list (the idle wait, see Broker.wait): it gets the same bookkeeping as an id LMOVEd here.
-- An empty reserve registers the consumer, so an id BLMOVEd right after is always recoverable.
-- `leave`: after the ack, requeue anything still held and unregister (a consumer's last call).
-- Follow-up ops (the next step of a chain, callbacks, a chord part) are carried out with the
-- ack, and only by the ack that took the id out of flight: a repeated ack (after a lost reply)
-- or a stale copy's ack changes nothing, so a step is never enqueued twice.
-- include: set_result
local ns, ttl = ARGV[1], tonumber(ARGV[4])
local removed = 1
if ARGV[2] ~= '' then
  removed = redis.call('LREM', KEYS[1], 1, ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  if ARGV[3] ~= '' then set_result(k_result(ns, ARGV[2]), ARGV[3], ttl) end
end
if ARGV[12] and removed > 0 then  -- included here: defined only on the calls that use it
  -- include: followups
  followups(12)
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
-- Fleet-wide rate limits (ARGV[11]: "task\ninterval\n..." from the consumer's app): a token
-- bucket of capacity 1 per task, as Celery's, in k_rate: task -> the next time a start is
-- allowed (every allowed start moves it one interval on), "task tail" -> the last slot given to
-- a waiting message. A message that may not start yet goes back to its queue's ETA set at a slot
-- of its own (k_rate_slots: id -> slot): it waits in Redis, never in a child. One that comes back
-- and still may not start (an earlier one started late) waits for the next free time.
local rates = nil
if ARGV[11] and ARGV[11] ~= '' then
  rates = {}
  for name, interval in string.gmatch(ARGV[11], '([^\n]+)\n([^\n]+)') do rates[name] = tonumber(interval) end
end
local deferred = nil  -- only with limits: Redis runs the whole chunk, definitions too, on each call
if rates then
  deferred = function(id, env, i)
    local task = env['task']
    local interval = rates[task]
    if not interval then return false end
    local buckets, slots = k_rate(ns), k_rate_slots(ns)
    local free = tonumber(redis.call('HGET', buckets, task) or '0') or 0
    local held = redis.call('HGET', slots, id)
    if now >= free then
      redis.call('HSET', buckets, task, string.format('%.6f', now + interval))
      if held then redis.call('HDEL', slots, id) end
      return false
    end
    local slot = free
    if not held then
      local tail = tonumber(redis.call('HGET', buckets, task .. ' tail') or '0') or 0
      if tail + interval > slot then slot = tail + interval end
      redis.call('HSET', buckets, task .. ' tail', string.format('%.6f', slot))
    end
    slot = string.format('%.6f', slot)
    redis.call('HSET', slots, id, slot)
    redis.call('LREM', KEYS[1], 1, id)
    redis.call('ZADD', KEYS[3 + n + i], slot, id)
    return true
  end
end
-- What RECEIVED needs of a body (its task name, and whether it ignores results), read from its
-- first fields when they are in qdeploy's order: `{"v":N,"id":"..","task":"..",` and then
-- `"ignore_result":true,` if it does (core/message.encode writes them so, and no such key when
-- it does not). A JSON decode of the whole body was 13 % of a reserve's work in Redis. A body in
-- any other order, or with "ignore_result" further on (an older producer; or in the arguments),
-- is decoded in full.
local HEAD = '^{"v":[12],"id":"[^"\\]*","task":"([^"\\]*)",()'
local function head(body)
  local task, at = string.match(body, HEAD)
  if not task then return nil end
  if string.sub(body, at, at + 20) == '"ignore_result":true,' then return {task = task, ignore_result = true} end
  if string.find(body, '"ignore_result"', at, true) then return nil end
  return {task = task, ignore_result = false}
end
local function hit(id, i)
  local body = redis.call('HGET', KEYS[2], id)
  local env = nil
  if body and (ARGV[8] == '1' or rates) then
    env = not rates and head(body) or nil  -- rate limits read the whole envelope
    if not env then
      local ok, decoded = pcall(cjson.decode, body)
      if ok and type(decoded) == 'table' then env = decoded end
    end
  end
  if rates and env and type(env['task']) == 'string' and deferred(id, env, i) then return nil end
  redis.call('HSET', k_consumers(ns), ARGV[6], ARGV[7])
  local count = redis.call('HINCRBY', KEYS[3], id, 1)
  local revoked = redis.call('EXISTS', k_revoked(ns, id))
  if env and ARGV[8] == '1' and env['ignore_result'] ~= true then
    set_result(k_result(ns, id), cjson.encode({state = 'RECEIVED', worker = ARGV[6],
      date_done = false, task = env['task'], received = now}), ttl)
  end
  return {id, body, count, revoked, i}
end
if ARGV[9] and ARGV[9] ~= '' then
  local got = hit(ARGV[9], 1)
  if got then return got end
end
for i = 1, n do
  local q, z = KEYS[3 + i], KEYS[3 + n + i]
  local due = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100)
  if #due > 0 then
    for _, id in ipairs(due) do redis.call('LPUSH', q, id) end
    redis.call('ZREM', z, unpack(due))
  end
  for _ = 1, 100 do  -- more than one only while rate-limited messages are put back
    local id = redis.call('LMOVE', q, KEYS[1], 'RIGHT', 'LEFT')
    if not id then break end
    local got = hit(id, i)
    if got then return got end
  end
end
redis.call('HSET', k_consumers(ns), ARGV[6], ARGV[7])
return false
