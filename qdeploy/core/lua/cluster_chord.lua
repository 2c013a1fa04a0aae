-- Redis Cluster: a chord's two hashes (hash tag {ns:chord:<gid>}): create it, count a header
-- task's part, hand out what it fires. Followups.lua's 'c' and 'p' on one server; here the body
-- (or, after a failed header task, its FAILURE record and its error callbacks) is not queued by
-- this script, whose slot is not the body queue's: it is kept under ' out' and returned, to
-- every part that finds the chord fired until the caller says it was delivered ('sent'), and
-- the caller delivers it at most once per id (cluster_publish_once.lua).
-- KEYS: meta, results. ARGV: ttl (result TTL, 0 = forever), op, ...
--   'c' nfields field value ...               -> 1 created, 0 fired already
--   'p' task_id result|'' error|'' k eb*k     -> the fire ops (JSON) when fired, else false
--   'sent'                                    -> forget the fire ops
local ck, rk, ttl, op = KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2]
-- include: chord_body
local function chord_ttl()
  if ttl and ttl > 0 then return math.max(ttl, 604800) end
  return 0
end
if op == 'sent' then return redis.call('HDEL', ck, ' out') end
if redis.call('HEXISTS', ck, ' fired') == 1 then
  if op == 'p' then return redis.call('HGET', ck, ' out') or false end
  return 0
end
if op == 'c' then
  local nf = tonumber(ARGV[3])
  for s = 4, 3 + nf, 2000 do redis.call('HSET', ck, unpack(ARGV, s, math.min(s + 1999, 3 + nf))) end
  if chord_ttl() > 0 then redis.call('EXPIRE', ck, chord_ttl()) end
  return 1
end
local function unpacked(s)  -- "queue\neta\nid\nbody" -> {'m', id, queue, eta, body}
  local a = string.find(s, '\n', 1, true)
  local b = string.find(s, '\n', a + 1, true)
  local c = string.find(s, '\n', b + 1, true)
  return {'m', string.sub(s, b + 1, c - 1), string.sub(s, 1, a - 1), string.sub(s, a + 1, b - 1), string.sub(s, c + 1)}
end
local nerr = tonumber(ARGV[6])
local idx = redis.call('HGET', ck, ARGV[3])  -- by task id: a redelivery counts once
if not idx then return false end
redis.call('HSET', rk, idx, ARGV[4] ~= '' and ARGV[4] or 'null')
if chord_ttl() > 0 then redis.call('EXPIRE', rk, chord_ttl()) end
if ARGV[5] ~= '' and redis.call('HSETNX', ck, ' err', ARGV[5]) == 1 then
  for k = 1, nerr do redis.call('HSET', ck, ' eb' .. k, ARGV[6 + k]) end
  redis.call('HSET', ck, ' ebn', nerr)
end
local n = tonumber(redis.call('HGET', ck, ' n'))
if not n or redis.call('HLEN', rk) < n then return false end
local meta = redis.call('HMGET', ck, ' err', ' ebn', ' pre', ' suf', ' imm', ' bid', ' bq', ' bcd', ' beta')
local fire = {}
if meta[1] then
  fire[1] = {'r', meta[6], meta[1]}
  for i = 1, tonumber(meta[2] or '0') or 0 do fire[#fire + 1] = unpacked(redis.call('HGET', ck, ' eb' .. i)) end
else
  local body, eta = chord_body(rk, n, meta)
  fire[1] = {'m', meta[6], meta[7], eta, body}
end
local packed = cjson.encode(fire)
redis.call('DEL', ck, rk)
redis.call('HSET', ck, ' fired', '1', ' out', packed)
local cttl = chord_ttl()
redis.call('EXPIRE', ck, cttl > 0 and cttl or 604800)
return packed
