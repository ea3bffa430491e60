for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[1], m)
  local cut = string.find(m, '\0', 1, true)
  if cut then
    local user = string.sub(m, 1, cut - 1)
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('PUBLISH', ARGV[2], 'p ' .. cjson.encode({type = 'presence', room = ARGV[3], user = user, event = 'leave'}))
    end
  end
end
return redis.call('HKEYS', KEYS[2])
