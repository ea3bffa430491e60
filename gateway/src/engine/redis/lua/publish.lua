local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local dup = redis.call('GET', KEYS[3])
if dup then return {tonumber(dup), epoch, 1} end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local frame = ARGV[3] .. seq .. ',"epoch":"' .. epoch .. '","ts":' .. now .. ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], seq .. '-1', 'f', frame, 't', now)
local max_age = tonumber(ARGV[6])
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 32)) do
  if now - tonumber(e[2][4]) > max_age then redis.call('XDEL', KEYS[2], e[1]) else break end
end
-- The seq counter outlives the messages by a week so an idle room keeps its epoch.
redis.call('PEXPIRE', KEYS[1], max_age * 2 + 604800000)
redis.call('PEXPIRE', KEYS[2], max_age * 2)
redis.call('SET', KEYS[3], seq, 'PX', ARGV[7])
redis.call('PUBLISH', ARGV[1], 'm ' .. seq .. ' ' .. epoch .. ' ' .. now .. ' ' .. ARGV[8] .. ' ' .. frame)
return {seq, epoch, 0}
