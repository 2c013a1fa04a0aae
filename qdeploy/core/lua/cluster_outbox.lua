-- Redis Cluster: a queue's outbox (follow-ups written with an ack, for other slots).
-- KEYS: outbox, outbox_due. ARGV: 'done', entry  -> the entry was delivered: forget it
--                               'claim', older_than_s, limit -> {entry, payload, ...}: entries
--   nobody cleared for that long (their deliverer died), each claimed for as long again
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[1] == 'done' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  return redis.call('ZREM', KEYS[2], ARGV[2])
end
local out = {}
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0,
    tonumber(ARGV[3]))) do
  local payload = redis.call('HGET', KEYS[1], entry)
  if payload then
    redis.call('ZADD', KEYS[2], now, entry)
    out[#out + 1] = entry
    out[#out + 1] = payload
  else
    redis.call('ZREM', KEYS[2], entry)
  end
end
return out
