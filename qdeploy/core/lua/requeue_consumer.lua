-- Give back everything one consumer holds (a reaped child, or a consumer restarting under the
-- same identity). KEYS: inflight, msgs, consumers. ARGV: ns, cid, unregister('1'|'0')
local ns, cid, inflight, msgs = ARGV[1], ARGV[2], KEYS[1], KEYS[2]
-- include: requeue
if ARGV[3] == '1' then redis.call('HDEL', KEYS[3], cid) end
return moved
