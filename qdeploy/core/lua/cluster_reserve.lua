-- Redis Cluster: ack a message of this queue (if any), then reserve the next one of this queue.
-- Every key is this queue's (hash tag {ns:queue}: one slot), so this is one atomic script, as
-- reserve.lua is on one server. What crosses slots is the caller's: results (written before the
-- ack), other queues, chords (the follow-ups go to this queue's outbox with the ack, and are
-- delivered from there: see docs/protocol.md, "Redis Cluster").
-- KEYS: inflight, msgs, dlv, queue, eta, consumers, revoked, rate, rate_slots, unique, unique_expiry,
--       outbox, outbox_due
-- ARGV: ack_id|'', cid, owner, reserve('1'|''), claimed|'', rates|'', outbox entry id|'', its payload|'',
--       delivered entry|'' (an earlier entry of this queue the caller has delivered: cleared here), [inline ops]
--   inline ops (follow-ups that stay in this queue): n, then per op 'm' id eta|'' body | 'u' key id
-- -> {acked (1 = the ack took the id out of flight), id|false, body, deliveries, revoked}
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local acked = 0
local function inline(pos)
  local nops = tonumber(ARGV[pos])
  pos = pos + 1
  for _ = 1, nops do
    local kind = ARGV[pos]
    if kind == 'm' then
      redis.call('HSET', KEYS[2], ARGV[pos + 1], ARGV[pos + 3])
      if ARGV[pos + 2] ~= '' then redis.call('ZADD', KEYS[5], ARGV[pos + 2], ARGV[pos + 1])
      else redis.call('LPUSH', KEYS[4], ARGV[pos + 1]) end
      pos = pos + 4
    elseif kind == 'u' then
      if redis.call('HGET', KEYS[10], ARGV[pos + 1]) == ARGV[pos + 2] then
        redis.call('HDEL', KEYS[10], ARGV[pos + 1])
        redis.call('ZREM', KEYS[11], ARGV[pos + 1])
      end
      pos = pos + 3
    else
      return redis.error_reply('unknown inline op ' .. tostring(kind))
    end
  end
end
if ARGV[9] ~= '' then
  redis.call('HDEL', KEYS[12], ARGV[9])
  redis.call('ZREM', KEYS[13], ARGV[9])
end
local function followups()
  if ARGV[10] then inline(10) end
  if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[12], ARGV[7], ARGV[8])
    redis.call('ZADD', KEYS[13], now, ARGV[7])
  end
end
if ARGV[1] ~= '' then
  acked = redis.call('LREM', KEYS[1], 1, ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  if acked > 0 then followups() end
elseif ARGV[10] or ARGV[7] ~= '' then
  followups()
end
if ARGV[4] ~= '1' then return {acked, false} end
redis.call('HSET', KEYS[6], ARGV[2], ARGV[3])
-- Rate limits (ARGV[6]: "task\ninterval\n..."), as reserve.lua's, with this queue's buckets.
local rates = nil
if ARGV[6] ~= '' then
  rates = {}
  for name, interval in string.gmatch(ARGV[6], '([^\n]+)\n([^\n]+)') do rates[name] = tonumber(interval) end
end
local function deferred(id, env)
  local task = env['task']
  local interval = rates[task]
  if not interval then return false end
  local free = tonumber(redis.call('HGET', KEYS[8], task) or '0') or 0
  local held = redis.call('HGET', KEYS[9], id)
  if now >= free then
    redis.call('HSET', KEYS[8], task, string.format('%.6f', now + interval))
    if held then redis.call('HDEL', KEYS[9], id) end
    return false
  end
  local slot = free
  if not held then
    local tail = tonumber(redis.call('HGET', KEYS[8], task .. ' tail') or '0') or 0
    if tail + interval > slot then slot = tail + interval end
    redis.call('HSET', KEYS[8], task .. ' tail', string.format('%.6f', slot))
  end
  slot = string.format('%.6f', slot)
  redis.call('HSET', KEYS[9], id, slot)
  redis.call('LREM', KEYS[1], 1, id)
  redis.call('ZADD', KEYS[5], slot, id)
  return true
end
local function hit(id)
  local body = redis.call('HGET', KEYS[2], id)
  if body and rates then
    local ok, env = pcall(cjson.decode, body)
    if ok and type(env) == 'table' and type(env['task']) == 'string' and deferred(id, env) then return nil end
  end
  local count = redis.call('HINCRBY', KEYS[3], id, 1)
  local mark = redis.call('ZSCORE', KEYS[7], id)  -- until when it is revoked ('inf': result_ttl 0)
  local until_ = mark and (tonumber(mark) or math.huge) or -1
  return {acked, id, body, count, (until_ > now) and 1 or 0}
end
if ARGV[5] ~= '' then
  local got = hit(ARGV[5])
  if got then return got end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
if #due > 0 then
  for _, id in ipairs(due) do redis.call('LPUSH', KEYS[4], id) end
  redis.call('ZREM', KEYS[5], unpack(due))
end
for _ = 1, 100 do  -- more than one only while rate-limited messages are put back
  local id = redis.call('LMOVE', KEYS[4], KEYS[1], 'RIGHT', 'LEFT')
  if not id then break end
  local got = hit(id)
  if got then return got end
end
return {acked, false}
