-- Included where a script writes a result (`-- include: set_result`): a TTL of 0 keeps it forever.
local function set_result(key, value, ttl)
  ttl = tonumber(ttl)
  if ttl and ttl > 0 then redis.call('SET', key, value, 'EX', ttl) else redis.call('SET', key, value) end
end
