-- The user's inbox cursor, "<seq> <epoch>": never back within an epoch; another epoch
-- replaces it. ARGV: seq, epoch, ttl ms.
local seq = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur then
  local cseq, cepoch = string.match(cur, '^(%d+) (.+)$')
  if cepoch == ARGV[2] and tonumber(cseq) > seq then seq = tonumber(cseq) end
end
redis.call('SET', KEYS[1], seq .. ' ' .. ARGV[2], 'PX', ARGV[3])
return 1
