-- Reads a page of history; creates nothing (a room without meta reports epoch '').
-- Messages are taken in batches until `limit` or `max bytes` is reached, so neither this
-- script nor its reply ever holds more than a page (plus one batch) of a huge history.
-- (`head` comes from head.lua, which this script starts with.)
local epoch, top, first = head(KEYS[1], KEYS[2], tonumber(ARGV[5]))
if epoch == '' then return {'', 0, 1, 0} end
local limit = tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[6])
local reverse = ARGV[3] == '1'
local from, to = ARGV[1], ARGV[2]
local got, bytes, more = {}, 0, 0
if limit > 0 then
  while true do
    local entries
    if reverse then
      entries = redis.call('XREVRANGE', KEYS[2], to, from, 'COUNT', 16)
    else
      entries = redis.call('XRANGE', KEYS[2], from, to, 'COUNT', 16)
    end
    for _, e in ipairs(entries) do
      local f = e[2][2]
      if #got >= limit or (max_bytes > 0 and #got > 0 and bytes + #f > max_bytes) then
        more = 1
        break
      end
      bytes = bytes + #f
      table.insert(got, e)
    end
    if more == 1 or #entries < 16 then break end
    local last = entries[#entries][1]
    if reverse then to = '(' .. last else from = '(' .. last end
  end
end
local out = {epoch, top, first, more}
local n = #got
for i = 1, n do
  local e = got[i]
  if reverse then e = got[n + 1 - i] end
  table.insert(out, tonumber(string.match(e[1], '^(%d+)')))
  table.insert(out, e[2][2])
end
return out
