-- A room's head, for the scripts that start with this file (history, presence join):
-- its epoch ('' without meta: reading creates nothing), top and first retained seq.
-- Expired messages go from the front first; the oldest alone is looked at (see publish).
local function head(meta_key, stream_key, max_age)
  local meta = redis.call('HMGET', meta_key, 'epoch', 'seq')
  local epoch = meta[1]
  if not epoch then return '', 0, 1 end
  local top = tonumber(meta[2] or '0')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local oldest = redis.call('XRANGE', stream_key, '-', '+', 'COUNT', 1)
  if oldest[1] and now - tonumber(oldest[1][2][4]) > max_age then
    for _, e in ipairs(redis.call('XRANGE', stream_key, '-', '+', 'COUNT', 32)) do
      if now - tonumber(e[2][4]) > max_age then redis.call('XDEL', stream_key, e[1]) else break end
    end
    oldest = redis.call('XRANGE', stream_key, '-', '+', 'COUNT', 1)
  end
  local first = top + 1
  if oldest[1] then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
  return epoch, top, first
end
