-- The epoch rule outside a publish: starts a new epoch if the room is still in the epoch a
-- node saw further than the store now is. Returns {1, new epoch} or {0, current epoch}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if epoch and epoch == ARGV[1] and top < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'seq', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, ARGV[3]}
end
return {0, epoch or ''}
