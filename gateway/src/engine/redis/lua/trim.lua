-- Expired messages leave a stream from the front, all of them at once, for the scripts
-- that start with this file (publish, and through head.lua history, heads and presence
-- join). Entries are in time order (each takes Redis's TIME when published).
local function seq_of(entry) return tonumber(string.match(entry[1], '^(%d+)')) end

-- Trims what has expired from `key` and returns its oldest entry left (nil: empty). The
-- oldest alone is looked at first (reading entries into Lua on every publish cost Redis
-- more than the rest of the script); then the next 32; past those, the first live seq is
-- found by bisection, O(log n) reads of one entry. Deleting at most 32 a call instead
-- left a backlog of expired messages in history (a room idle past its max age served 68
-- of its 100 expired messages, and counted them retained for resume and the DM quota).
local function trim_expired(key, now, max_age)
  local function expired(e) return now - tonumber(e[2][4]) > max_age end
  local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  if not oldest or not expired(oldest) then return oldest end
  local front = redis.call('XRANGE', key, '-', '+', 'COUNT', 32)
  for _, e in ipairs(front) do
    if not expired(e) then
      redis.call('XTRIM', key, 'MINID', e[1])
      return e
    end
  end
  local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if expired(newest) then
    redis.call('XTRIM', key, 'MINID', (seq_of(newest) + 1) .. '-0')
    return nil
  end
  -- The entry at or after `lo` has expired, the one at or after `hi` has not.
  local lo, hi = seq_of(front[#front]), seq_of(newest)
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XRANGE', key, mid .. '-0', '+', 'COUNT', 1)[1]
    if e and expired(e) then lo = mid else hi = mid end
  end
  local first = redis.call('XRANGE', key, hi .. '-0', '+', 'COUNT', 1)[1]
  redis.call('XTRIM', key, 'MINID', first[1])
  return first
end
