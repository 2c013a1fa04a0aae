-- A chord's body message when it fires, and its ETA: the template's prefix, the header's
-- results in index order (from the results hash, 1000 fields per HMGET; a missing one is null)
-- and its suffix (an immutable body is the prefix as it is); the ETA as stored, or now plus
-- the body's countdown. `meta` is HMGET ck ' err' ' ebn' ' pre' ' suf' ' imm' ' bid' ' bq' ' bcd' ' beta'.
local function chord_body(rk, n, meta)
  local body = meta[3]
  if meta[5] ~= '1' then
    local parts = {}
    for s = 0, n - 1, 1000 do
      local fields = {}
      for i = s, math.min(s + 999, n - 1) do fields[#fields + 1] = tostring(i) end
      for _, v in ipairs(redis.call('HMGET', rk, unpack(fields))) do parts[#parts + 1] = v or 'null' end
    end
    body = meta[3] .. '[' .. table.concat(parts, ',') .. ']' .. meta[4]
  end
  local eta = meta[9] or ''
  if eta == '' and meta[8] and meta[8] ~= '' then
    local t = redis.call('TIME')
    eta = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(meta[8]))
  end
  return body, eta
end
