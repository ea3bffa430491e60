local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local max_age = tonumber(ARGV[5])
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
  redis.call('PEXPIRE', KEYS[1], max_age * 2 + 604800000)
  top = 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 32)) do
  if now - tonumber(e[2][4]) > max_age then redis.call('XDEL', KEYS[2], e[1]) else break end
end
local first = top + 1
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if oldest[1] then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
local out = {epoch, top, first}
local limit = tonumber(ARGV[4])
if limit > 0 then
  local entries
  if ARGV[3] == '1' then
    entries = redis.call('XREVRANGE', KEYS[2], ARGV[2], ARGV[1], 'COUNT', limit)
  else
    entries = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[2], 'COUNT', limit)
  end
  local n = #entries
  for i = 1, n do
    local e = entries[i]
    if ARGV[3] == '1' then e = entries[n + 1 - i] end
    table.insert(out, tonumber(string.match(e[1], '^(%d+)')))
    table.insert(out, e[2][2])
  end
end
return out
