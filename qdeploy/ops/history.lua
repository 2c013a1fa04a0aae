-- Add a batch of task-history records and trim what falls beyond the cap, atomically: an index
-- entry never exists without its record (qdeploy/ops/history.py explains the layout).
-- KEYS: records (hash), time index, slowest, combos (zsets): history.script_keys. Every other key
-- it touches (a combo's set, a minute's hash) is derived from ARGV[1], the prefix of those keys
-- ('{ns:hist}:'), so it is in their hash slot: Redis Cluster runs it on the slot's primary.
-- ARGV: prefix, cap, trim_max, minute_ttl, slow_max, n,
--       n x (id, value)       the records: history.FIELDS, tab-separated (state, node, name first)
--       n x score             their start times (whole microseconds)
--       g, g x (combo, first, count)   the records are sorted by combo: records first..first+count-1
--       k, k x (runtime, i)   candidates for the slowest set (the writer sends what may enter it)
--       m, m x (minute, field, increment)
-- The common case, records that are new, costs Redis a few bulk commands and almost no Lua per
-- record (HSET straight from ARGV, ZADD from tables built in one pass); only a record that
-- exists already (its end after its start, a retry) is merged one by one.
local prefix, cap, trim_max, minute_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local slow_max, n = tonumber(ARGV[5]), tonumber(ARGV[6])
local rec, tkey, slowkey, combos = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local MAX_ATTEMPTS = 20
local COMBO = '^([^\t]*\t[^\t]*\t[^\t]*)\t'
local RUNTIME = '^[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t([^\t]*)'
local match = string.match
-- history.FIELDS positions: 1 state, 2 node, 3 name, 4 queue, 5 pid, 6 started, 7 done,
-- 8 runtime, 9 exc, 10 killed, 11 attempts, 12 due, 13.. what the child sent (retries ... call)
-- A delivery's own fields: the next delivery never inherits them. 19, its arguments, too: they
-- are kept (history_args = failures) for the delivery that failed or is retried, so a retried
-- task that then succeeds keeps none, whether or not its attempts landed in one batch.
local PER_ATTEMPT = {5, 6, 7, 8, 9, 10, 12, 19}

local function fields(value)
  local out, i = {}, 0
  for f in string.gmatch(value .. '\t', '([^\t]*)\t') do i = i + 1; out[i] = f end
  return out, i
end

-- An update of a record: the same delivery (its end after its start), or another one (a retry,
-- a redelivery: on another node, or started after the old one ended), whose predecessor then
-- moves into `attempts` (a JSON list). Fields the new value leaves empty keep the old ones'.
local function merge(old, new)
  local o, on = fields(old)
  local r, rn = fields(new)
  local done, started = tonumber(o[7] or ''), tonumber(r[6] or '') or 0
  local again = o[2] ~= r[2] or (done ~= nil and started >= done - 1000)
  local attempts = {}
  if o[11] and o[11] ~= '' then
    local ok, list = pcall(cjson.decode, o[11])
    if ok and type(list) == 'table' then attempts = list end
  end
  if again then
    -- times stay text: cjson would print whole microseconds with 14 digits
    local a = {state = o[1], node = o[2], pid = tonumber(o[5] or ''), started = o[6], done = o[7],
               runtime = o[8], exc = o[9], killed = o[10]}
    for k, v in pairs(a) do if v == '' then a[k] = nil end end
    attempts[#attempts + 1] = a
  end
  if r[11] and r[11] ~= '' then  -- deliveries that ended within the writer's batch
    local ok, list = pcall(cjson.decode, r[11])
    if ok and type(list) == 'table' then
      for _, a in ipairs(list) do attempts[#attempts + 1] = a end
    end
  end
  while #attempts > MAX_ATTEMPTS do table.remove(attempts, 1) end
  local skip = {}
  if again then for _, i in ipairs(PER_ATTEMPT) do skip[i] = true end end
  local count = math.max(on, rn)
  for i = 1, count do
    if (r[i] == nil or r[i] == '') and not skip[i] then r[i] = o[i] or '' end
    if r[i] == nil then r[i] = '' end
  end
  r[11] = ''
  if #attempts > 0 then
    local ok, text = pcall(cjson.encode, attempts)
    if ok then r[11] = text end
  end
  return table.concat(r, '\t', 1, count)
end

local gone, gn = {}, {}  -- sorted set key -> ids to remove from it
local keyof, touched = {}, {}  -- combo -> its key; combos that lost ids
local function key(combo)
  local k = keyof[combo]
  if not k then k = prefix .. 'c:' .. combo; keyof[combo] = k end
  return k
end
local function remove(k, id)
  local l = gone[k]
  if not l then l = {}; gone[k] = l; gn[k] = 0 end
  gn[k] = gn[k] + 1
  l[gn[k]] = id
end
local function call(cmd, k, l, count, step)
  for s = 1, count, step do redis.call(cmd, k, unpack(l, s, math.min(s + step - 1, count))) end
end
local function from_argv(cmd, k, first, last, step)
  for s = first, last, step do redis.call(cmd, k, unpack(ARGV, s, math.min(s + step - 1, last))) end
end

local ids, times = {}, {}
local sbase = 6 + 2 * n  -- ARGV[sbase + i]: record i's score
for i = 1, n do
  local id = ARGV[5 + 2 * i]
  ids[i] = id
  times[2 * i - 1] = ARGV[sbase + i]
  times[2 * i] = id
end
local olds = {}
for s = 1, n, 1000 do
  local part = redis.call('HMGET', rec, unpack(ids, s, math.min(s + 999, n)))
  for j = 1, #part do olds[s + j - 1] = part[j] end
end
if n > 0 then
  from_argv('HSET', rec, 7, 6 + 2 * n, 2000)
  call('ZADD', tkey, times, 2 * n, 2000)
end
local pos = 7 + 3 * n
local g = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, g do
  local combo, first, count = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  pos = pos + 3
  local l = {}
  for j = 0, count - 1 do
    l[2 * j + 1] = ARGV[sbase + first + j]
    l[2 * j + 2] = ids[first + j]
  end
  call('ZADD', key(combo), l, 2 * count, 2000)
  redis.call('ZADD', combos, 0, combo)
end
-- Records that existed: merge them with what they were, and take them out of their old combo.
local norun, nn = {}, 0
for i = 1, n do
  local old = olds[i]
  if old then
    local id, value = ids[i], ARGV[6 + 2 * i]
    local ocombo, combo = match(old, COMBO), match(value, COMBO)
    if ocombo and ocombo ~= combo then remove(key(ocombo), id); touched[ocombo] = true end
    redis.call('HSET', rec, id, merge(old, value))
    if match(value, RUNTIME) == '' then nn = nn + 1; norun[nn] = id end
  end
end
for k, l in pairs(gone) do call('ZREM', k, l, gn[k], 1000) end
if nn > 0 then call('ZREM', slowkey, norun, nn, 1000) end
local k = tonumber(ARGV[pos])
pos = pos + 1
if k > 0 then
  local l = {}
  for j = 0, k - 1 do
    l[2 * j + 1] = ARGV[pos + 2 * j]
    l[2 * j + 2] = ids[tonumber(ARGV[pos + 2 * j + 1])]
  end
  call('ZADD', slowkey, l, 2 * k, 2000)
  local over = redis.call('ZCARD', slowkey) - slow_max
  if over > 0 then redis.call('ZREMRANGEBYRANK', slowkey, 0, over - 1) end
end
pos = pos + 2 * k

-- Trim the oldest records beyond the cap (at most trim_max per call: a lowered cap converges
-- over a few batches instead of blocking Redis once), from every index they are in.
local trimmed = 0
local total = redis.call('ZCARD', tkey)
if total > cap then
  local oldest = redis.call('ZRANGE', tkey, 0, math.min(total - cap, trim_max) - 1)
  gone, gn = {}, {}
  for s = 1, #oldest, 1000 do
    local part = {unpack(oldest, s, math.min(s + 999, #oldest))}
    local values = redis.call('HMGET', rec, unpack(part))
    for j = 1, #part do
      local combo = values[j] and string.match(values[j], COMBO)
      if combo then remove(key(combo), part[j]); touched[combo] = true end
    end
    redis.call('ZREM', tkey, unpack(part))
    redis.call('ZREM', slowkey, unpack(part))
    redis.call('HDEL', rec, unpack(part))
  end
  for key_, l in pairs(gone) do call('ZREM', key_, l, gn[key_], 1000) end
  trimmed = #oldest
end
-- A combo whose set emptied leaves the list the search reads.
for combo in pairs(touched) do
  if redis.call('EXISTS', key(combo)) == 0 then redis.call('ZREM', combos, combo) end
end

-- Per-minute counts and run-time buckets (the charts), each minute's hash expiring on its own.
local m = tonumber(ARGV[pos]) or 0
local minutes = {}
for i = 0, m - 1 do
  local b = pos + 1 + i * 3
  local mk = prefix .. 'm:' .. ARGV[b]
  redis.call('HINCRBY', mk, ARGV[b + 1], ARGV[b + 2])
  minutes[mk] = true
end
for mk in pairs(minutes) do redis.call('EXPIRE', mk, minute_ttl) end
local floor = -1  -- the writer sends slow candidates above this from now on
if redis.call('ZCARD', slowkey) >= slow_max then
  floor = tonumber(redis.call('ZRANGE', slowkey, 0, 0, 'WITHSCORES')[2]) or -1
end
return {n, trimmed, tostring(floor)}
