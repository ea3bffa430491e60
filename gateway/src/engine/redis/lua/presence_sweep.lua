-- Drops a room's presence entries nobody refreshed (a crashed node's), announcing the
-- users who left with them, and lists the users present. A node refreshing its own
-- connections passes their members (refreshed first) and a key ttl (the keys then live
-- that much longer; 0 leaves them as they are).
-- ARGV: now ms, expiry ms, key ttl ms, channel (`` announces nothing), room, publish
-- command, payload prefix, member...
for i = 8, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
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
return redis.call('HKEYS', KEYS[2])
