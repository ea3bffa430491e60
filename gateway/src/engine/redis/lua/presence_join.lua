if redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
    redis.call('PUBLISH', ARGV[4], 'p ' .. ARGV[5])
  end
end
return 1
