-- Send one run of a periodic task, at most once per (entry, slot), only as the lock holder.
-- KEYS: lock, last, runs, msg, queue list, eta zset
-- ARGV: token, name, slot_us, anchor_us, record JSON, id|'', body|'', eta|''
-- -> 1 dispatched (or skip recorded), 0 slot already done, -1 not the lock holder
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1')
local slot, anchor = tonumber(ARGV[3]), tonumber(ARGV[4])
if last >= slot then return 0 end
if anchor < slot then anchor = slot end
redis.call('HSET', KEYS[2], ARGV[2], string.format('%.0f', anchor))
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
  if ARGV[8] ~= '' then
    redis.call('ZADD', KEYS[6], ARGV[8], ARGV[6])
  else
    redis.call('LPUSH', KEYS[5], ARGV[6])
  end
end
return 1
