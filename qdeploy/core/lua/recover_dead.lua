-- Requeue what every consumer whose owner's heartbeat expired holds, and forget it.
-- KEYS: consumers, msgs, sweep lock. ARGV: ns, every (ms; 0: sweep now). Returns {cid, moved, ...}.
-- With `every`, the sweep happens only if no one swept within that time (the lock): every
-- master tries at each of its beats, and a fleet of n nodes sweeps about once per `every`
-- instead of n/2 times a second, each sweep O(n) (a sweep per beat made it O(n^2)).
local ns, msgs = ARGV[1], KEYS[2]
local every = tonumber(ARGV[2]) or 0
if every > 0 and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', every) then return {} end
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
