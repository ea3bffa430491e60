-- Any number of leaves: KEYS two per leave (pc, pu), ARGV six per leave (member, user,
-- channel, leave frame, publish command, channel prefix).
for i = 1, #KEYS / 2 do
  local pc, pu, a = KEYS[2 * i - 1], KEYS[2 * i], 6 * (i - 1)
  if redis.call('ZREM', pc, ARGV[a + 1]) == 1 then
    if redis.call('HINCRBY', pu, ARGV[a + 2], -1) <= 0 then
      redis.call('HDEL', pu, ARGV[a + 2])
      if ARGV[a + 4] ~= '' then redis.call(ARGV[a + 5], ARGV[a + 3], ARGV[a + 6] .. 'p ' .. ARGV[a + 4]) end
    end
  end
end
return 1
