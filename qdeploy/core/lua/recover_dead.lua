-- Requeue what every consumer whose owner's heartbeat expired holds, and forget it.
-- KEYS: consumers, msgs. ARGV: ns. Returns {cid, moved, cid, moved, ...}.
local ns, msgs = ARGV[1], KEYS[2]
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local cid, owner = all[i], all[i + 1]
  if redis.call('EXISTS', k_heartbeat(ns, owner)) == 0 then
    local inflight = k_inflight(ns, cid)
    -- include: requeue
    redis.call('HDEL', KEYS[1], cid)
    table.insert(out, cid)
    table.insert(out, moved)
  end
end
return out
