-- Drops a room's presence entries nobody refreshed (a crashed node's), announcing the
-- users who left with them, and returns how many users are present, up to `limit` of
-- them, and the refreshed members that were missing. A node refreshing its own
-- connections passes their members (refreshed first) and a key ttl (the keys then live
-- that much longer; 0 leaves them as they are).
-- A missing member is not added back here: it may have left since the node listed it.
-- The node joins it again if it is still there (presence.rs, `refresh_presence`): entries
-- a Redis restart, a failover or another node's sweep took are restored that way.
-- ARGV: now ms, expiry ms, key ttl ms, channel (`` announces nothing), room, publish
-- command, payload prefix, limit (0: the count alone, -1: every user), member...
local missing = {}
for i = 9, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[1], m)
  local cut = string.find(m, '\0', 1, true)
  if cut then
    local user = string.sub(m, 1, cut - 1)
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      if ARGV[4] ~= '' then redis.call(ARGV[6], ARGV[4], ARGV[7] .. 'p ' .. cjson.encode({type = 'presence', room = ARGV[5], left = {user}})) end
    end
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
-- The users, in pages of the hash's scan rather than HKEYS: listing a room of 100,000
-- users took 50 ms, and Redis runs nothing else meanwhile.
local limit = tonumber(ARGV[8])
local count = redis.call('HLEN', KEYS[2])
if limit == 0 then return {count, {}, missing} end
if limit < 0 or limit >= count then return {count, redis.call('HKEYS', KEYS[2]), missing} end
local users, cursor = {}, '0'
repeat
  local page = redis.call('HSCAN', KEYS[2], cursor, 'COUNT', limit)
  cursor = page[1]
  for i = 1, #page[2], 2 do
    if #users < limit then users[#users + 1] = page[2][i] end
  end
until cursor == '0' or #users >= limit
return {count, users, missing}
