-- Send a failed task again, under its own id, from what the history kept of it (the dashboard's
-- "retry"): only while its record says FAILURE and no message with its id waits or runs, so a
-- second click (or a second dashboard) cannot send it twice. Publishes as publish_one.lua does.
-- KEYS: history records, msgs, the queue list. ARGV: id, body.
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 'gone' end
local state = string.match(value, '^([^\t]*)\t')
if state ~= 'FAILURE' then return 'state ' .. tostring(state) end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 'queued' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[1])
return 'ok'
