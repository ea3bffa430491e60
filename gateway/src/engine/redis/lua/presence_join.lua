if redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
    if ARGV[5] ~= '' then redis.call(ARGV[7], ARGV[4], ARGV[8] .. 'p ' .. ARGV[5]) end
  end
end
-- Both keys expire unless a live node refreshes them: a room whose every node crashed
-- leaves nothing behind.
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
-- The room's head, read in the same step: the joiner's catch-up starts there (it has
-- subscribed already), one round trip per join fewer. (`head`: head.lua, prepended.)
local epoch, top, first = head(KEYS[3], KEYS[4], tonumber(ARGV[9]))
return {epoch, top, first, 0}
