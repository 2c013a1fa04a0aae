-- Send a failed task again, under its own id, from what the history kept of it (the dashboard's
-- "retry"): only while its record says FAILURE and no message with its id waits or runs, so a
-- second click (or a second dashboard) cannot send it twice. Publishes as publish_one.lua does.
-- KEYS: history records, msgs, the queue list. ARGV: id, body.
-- On Redis Cluster the history's slot is not the queue's: KEYS are then msgs and the queue list
-- only (the caller read the record's FAILURE just before), and the check that no message with
-- the id waits or runs is the atomic part.
local msgs, queue = KEYS[2], KEYS[3]
if #KEYS == 2 then
  msgs, queue = KEYS[1], KEYS[2]
else
  local value = redis.call('HGET', KEYS[1], ARGV[1])
  if not value then return 'gone' end
  local state = string.match(value, '^([^\t]*)\t')
  if state ~= 'FAILURE' then return 'state ' .. tostring(state) end
end
if redis.call('HEXISTS', msgs, ARGV[1]) == 1 then return 'queued' end
redis.call('HSET', msgs, ARGV[1], ARGV[2])
redis.call('LPUSH', queue, ARGV[1])
return 'ok'
