if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    if ARGV[4] ~= '' then redis.call(ARGV[5], ARGV[3], ARGV[6] .. 'p ' .. ARGV[4]) end
  end
end
return 1
