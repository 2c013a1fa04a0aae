-- Drop every ready and scheduled message of some queues (bodies included).
-- KEYS: msgs, dlv, queue lists..., eta zsets... ARGV: n. Returns messages removed per queue.
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local ids = redis.call('LRANGE', KEYS[2 + i], 0, -1)
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2 + n + i], 0, -1)) do table.insert(ids, id) end
  for s = 1, #ids, 1000 do
    local chunk = {unpack(ids, s, math.min(s + 999, #ids))}
    redis.call('HDEL', KEYS[1], unpack(chunk))
    redis.call('HDEL', KEYS[2], unpack(chunk))
  end
  redis.call('DEL', KEYS[2 + i], KEYS[2 + n + i])
  out[i] = #ids
end
return out
