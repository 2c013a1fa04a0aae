-- Anchor a new entry (its first run comes one period later), only as the lock holder.
-- KEYS: lock, last. ARGV: token, name, anchor_us -> 1 set, 0 already anchored, -1 not holder
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
return redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])
