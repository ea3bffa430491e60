-- One of a user's room starts from their token bucket, one for the whole cluster
-- (limits.newRoomsPerHour). The bucket refills at ARGV[2] a second up to ARGV[3]; a take
-- always succeeds (the room is started already) and may leave a debt, at most the burst,
-- which the user's later starts wait out. Times are the nodes' clocks: one behind another
-- refills nothing (the bucket's time never goes back).
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(v[1]) or burst
local at = tonumber(v[2]) or now
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
  at = now
end
tokens = math.max(-burst, tokens - 1)
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(at))
-- Gone once it would be full again: a user who starts nothing keeps no key.
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate))
return tostring(tokens)
