-- A room's head, for the scripts that start with this file (history, presence join,
-- heads; trim.lua comes first): its epoch ('' without meta: reading creates nothing), top
-- and first retained seq, after the expired messages left.
local function head(meta_key, stream_key, max_age)
  local meta = redis.call('HMGET', meta_key, 'epoch', 'seq')
  local epoch = meta[1]
  if not epoch then return '', 0, 1 end
  local top = tonumber(meta[2] or '0')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local oldest = trim_expired(stream_key, now, max_age)
  local first = top + 1
  if oldest then first = seq_of(oldest) end
  return epoch, top, first
end
