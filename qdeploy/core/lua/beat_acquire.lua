-- Take or renew beat's leader lock. KEYS: lock. ARGV: token, ttl_us, now_us|'', holder.
-- Returns 0 when the lock is ours now, else the µs until the holder's lock expires.
-- `until` is measured on the Redis server's clock unless the caller passes its own.
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local ttl = tonumber(ARGV[2])
local tok = redis.call('HGET', KEYS[1], 'token')
local untl = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if tok and tok ~= ARGV[1] and untl > now then return string.format('%.0f', untl - now) end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'until', string.format('%.0f', now + ttl), 'holder', ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(2 * ttl / 1000))
return 0
