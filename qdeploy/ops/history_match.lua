-- A search's scan, done where the records are (qdeploy/ops/history_search.py): the next
-- ARGV[4] ids of sorted set KEYS[2] within scores ARGV[2]..ARGV[1] from offset ARGV[3] (highest
-- first unless ARGV[5] is '0'), and of those the ones whose record (hash KEYS[1]) passes every
-- filter: its state, node and name among the ARGV lists that follow (an empty list: any), its
-- start time within ARGV[7]..ARGV[8] ('' for none: the set is not the time index) and, when
-- ARGV[6] is not '', the record contains ARGV[6] (arguments as they are stored: escaped JSON).
-- Returns {ids looked at, hit ids...}. A caller asks for a few thousand ids per call, so Redis
-- is never held for long, and checks a text hit again (the text is matched on the whole record).
local rec, key, needle = KEYS[1], KEYS[2], ARGV[6]
local since, till = tonumber(ARGV[7]), tonumber(ARGV[8])
local pos = 9
local function set()
  local count = tonumber(ARGV[pos])
  local out = nil
  if count > 0 then
    out = {}
    for i = pos + 1, pos + count do out[ARGV[i]] = true end
  end
  pos = pos + count + 1
  return out
end
local states, nodes, names = set(), set(), set()
local ids
if ARGV[5] == '0' then
  ids = redis.call('ZRANGEBYSCORE', key, ARGV[2], ARGV[1], 'LIMIT', ARGV[3], ARGV[4])
else
  ids = redis.call('ZREVRANGEBYSCORE', key, ARGV[1], ARGV[2], 'LIMIT', ARGV[3], ARGV[4])
end
local out, n = {#ids}, 1
local fields = states or nodes or names or since or till  -- else only the text decides (cheaper per record)
local find, match = string.find, string.match
local values = {}
for s = 1, #ids, 1000 do  -- one HMGET per 1000 ids, not one HGET each
  local part = redis.call('HMGET', rec, unpack(ids, s, math.min(s + 999, #ids)))
  for j = 1, #part do values[s + j - 1] = part[j] end
end
for i, id in ipairs(ids) do
  local v = values[i]
  if v then
    local ok = true
    if fields then
      local state, node, name, started = match(v, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t[^\t]*\t[^\t]*\t([^\t]*)')
      ok = state ~= nil and (not states or states[state]) and (not nodes or nodes[node])
        and (not names or names[name])
      if ok and (since or till) then
        local t = tonumber(started)
        ok = t ~= nil and (not since or t >= since) and (not till or t <= till)
      end
    end
    if ok and needle ~= '' then ok = find(v, needle, 1, true) ~= nil end
    if ok then n = n + 1; out[n] = id end
  end
end
return out
