-- Included by reserve (`-- include: followups`): what continues a workflow, carried out in the
-- script that acks the task it follows, so a chain's next step, a callback or a chord's body is
-- enqueued exactly once, with the ack (docs/protocol.md, "Workflows"). Expects locals ns, ttl
-- (the result TTL, 0 = forever); KEYS[2] is the message hash. An op list starts at ARGV[pos]
-- with its length, then per op its kind and fields:
--   m id queue eta|'' body                      store and queue (or schedule) a message
--   c gid nfields field value ...               create a chord: ' n', ' pre', ' suf', ' imm',
--                                               ' bid', ' bq', ' bcd', ' beta', member id -> index
--   p gid task_id result|'' error|'' k eb*k     a header task's part; eb = "queue\neta\nid\nbody"
--   u key task_id                               free a unique send's key if this message holds it
-- include: chord_body
local function fu_chord_ttl()
  if ttl and ttl > 0 then return math.max(ttl, 604800) end
  return 0
end
local function fu_publish(id, q, eta, body)
  redis.call('HSET', KEYS[2], id, body)
  if eta ~= '' then redis.call('ZADD', k_eta(ns, q), eta, id) else redis.call('LPUSH', k_queue(ns, q), id) end
end
local function fu_packed(s)
  local a = string.find(s, '\n', 1, true)
  local b = string.find(s, '\n', a + 1, true)
  local c = string.find(s, '\n', b + 1, true)
  fu_publish(string.sub(s, b + 1, c - 1), string.sub(s, 1, a - 1), string.sub(s, a + 1, b - 1), string.sub(s, c + 1))
end
local function fu_fire(ck, rk, n)
  local meta = redis.call('HMGET', ck, ' err', ' ebn', ' pre', ' suf', ' imm', ' bid', ' bq', ' bcd', ' beta')
  if meta[1] then  -- a header task failed: the body is not run; its result and errbacks say why
    set_result(k_result(ns, meta[6]), meta[1], ttl)
    for i = 1, tonumber(meta[2] or '0') or 0 do fu_packed(redis.call('HGET', ck, ' eb' .. i)) end
  else
    local body, eta = chord_body(rk, n, meta)
    fu_publish(meta[6], meta[7], eta, body)
  end
  redis.call('DEL', ck, rk)
  redis.call('HSET', ck, ' fired', '1')  -- a redelivered header task finds this and counts nothing
  local cttl = fu_chord_ttl()
  redis.call('EXPIRE', ck, cttl > 0 and cttl or 604800)
end
local function followups(pos)
  local nops = tonumber(ARGV[pos])
  pos = pos + 1
  for _ = 1, nops do
    local kind = ARGV[pos]
    if kind == 'm' then
      fu_publish(ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3], ARGV[pos + 4])
      pos = pos + 5
    elseif kind == 'c' then
      local ck, nf = k_chord(ns, ARGV[pos + 1]), tonumber(ARGV[pos + 2])
      for s = pos + 3, pos + 2 + nf, 2000 do
        redis.call('HSET', ck, unpack(ARGV, s, math.min(s + 1999, pos + 2 + nf)))
      end
      local cttl = fu_chord_ttl()
      if cttl > 0 then redis.call('EXPIRE', ck, cttl) end
      pos = pos + 3 + nf
    elseif kind == 'p' then
      local ck, rk = k_chord(ns, ARGV[pos + 1]), k_chord_results(ns, ARGV[pos + 1])
      local nerr = tonumber(ARGV[pos + 5])
      local idx = redis.call('HGET', ck, ARGV[pos + 2])  -- by task id: a redelivery counts once
      if idx then
        local result = ARGV[pos + 3]
        redis.call('HSET', rk, idx, result ~= '' and result or 'null')
        local cttl = fu_chord_ttl()
        if cttl > 0 then redis.call('EXPIRE', rk, cttl) end
        if ARGV[pos + 4] ~= '' and redis.call('HSETNX', ck, ' err', ARGV[pos + 4]) == 1 then
          for k = 1, nerr do redis.call('HSET', ck, ' eb' .. k, ARGV[pos + 5 + k]) end
          redis.call('HSET', ck, ' ebn', nerr)
        end
        local n = tonumber(redis.call('HGET', ck, ' n'))
        if n and redis.call('HLEN', rk) >= n then fu_fire(ck, rk, n) end
      end
      pos = pos + 6 + nerr
    elseif kind == 'u' then
      local uk = k_unique(ns, ARGV[pos + 1])
      if redis.call('GET', uk) == ARGV[pos + 2] then redis.call('DEL', uk) end
      pos = pos + 3
    else
      return redis.error_reply('unknown follow-up op ' .. tostring(kind))
    end
  end
end
