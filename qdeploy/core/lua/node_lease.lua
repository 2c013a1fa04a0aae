-- The lease that makes a node name (node@host) belong to one live master.
-- KEYS: lease. ARGV: token, value JSON, ttl_ms, op ('take' | 'renew' | 'steal' | 'release'), old value|''
-- take:    ours if free or already ours (renewed) -> 1; else the holder's value
-- renew:   extend if ours -> 1; free (expired) -> taken again, 1; else the holder's value
-- steal:   take it from a holder the caller proved dead, if it still is that holder -> 1, else 0
-- release: delete if ours -> 1, else 0
local current = redis.call('GET', KEYS[1])
local op = ARGV[4]
local function ours()
  if not current then return false end
  local ok, held = pcall(cjson.decode, current)
  return ok and type(held) == 'table' and held['token'] == ARGV[1]
end
if op == 'release' then
  if ours() then redis.call('DEL', KEYS[1]) return 1 end
  return 0
end
if op == 'steal' then
  if current ~= ARGV[5] then return 0 end
elseif current and not ours() then
  return current
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
