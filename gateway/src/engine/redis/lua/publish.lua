local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'e')
local epoch = meta[1]
-- Until when the stream was last given to live (ms; the meta a week more; see the end).
local lives_until = tonumber(meta[3] or '0')
if epoch and epoch == ARGV[9] and tonumber(meta[2] or '0') < tonumber(ARGV[10]) then
  -- The epoch rule: the store is behind what the publishing node has seen of this epoch
  -- (restored from an older snapshot, or a lagging replica took over). Numbering on would
  -- reuse seqs clients already have; a new epoch makes them see the gap instead.
  epoch = false
end
if not epoch then
  -- A new epoch starts with an empty stream. Besides the rule above, a stream can be left
  -- without its meta (evicted under maxmemory, deleted by hand: by design the meta
  -- outlives it): its entries belong to an epoch nobody can name any more, and numbering
  -- from 1 under them would be refused by XADD (an id at or below the top) on every
  -- publish until the seq passed them.
  redis.call('DEL', KEYS[2])
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
  lives_until = 0
end
local dup = redis.call('GET', KEYS[3])
if dup then
  local dseq, depoch = string.match(dup, '^(%d+) (.+)$')
  if not dseq then return {tonumber(dup), epoch, 1, 0} end
  -- An id is a duplicate within its epoch; one stored in a replaced epoch is stored again.
  if depoch == epoch then return {tonumber(dseq), epoch, 1, 0} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_age = tonumber(ARGV[6])
-- Expired messages go before the quota is counted: a sender whose messages all expired
-- was refused until someone else's publish or read trimmed them (`trim_expired` comes
-- from trim.lua, which this script starts with).
local oldest = trim_expired(KEYS[2], now, max_age)
-- DM quota: the sender's seqs still retained in this inbox (KEYS[4]), at most ARGV[11].
local quota = tonumber(ARGV[11])
if quota > 0 then
  if oldest then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. seq_of(oldest))
  else
    -- Nothing retained (expired, or a new epoch): none of the sender's seqs count.
    redis.call('DEL', KEYS[4])
  end
  if redis.call('ZCARD', KEYS[4]) >= quota then return {0, epoch, 2, 0} end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local frame = ARGV[3] .. seq .. ',"epoch":"' .. epoch .. '","ts":' .. now .. ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], seq .. '-1', 'f', frame, 't', now)
-- The stream lives two max ages after its last refresh, the meta (the seq counter) a week
-- longer so an idle room keeps its epoch. Refreshing them on every publish cost two of its
-- commands; now only once less than one and a half max ages are left (a message appended
-- now still outlives its own max age; a longer max age in the config refreshes at once),
-- or when the stream held nothing before this message: it may be new (a new room or
-- epoch, or it expired or was evicted under its meta) and without an expiry yet.
if lives_until - now < max_age * 1.5 or not oldest then
  redis.call('PEXPIRE', KEYS[1], max_age * 2 + 604800000)
  redis.call('PEXPIRE', KEYS[2], max_age * 2)
  redis.call('HSET', KEYS[1], 'e', now + max_age * 2)
end
redis.call('SET', KEYS[3], seq .. ' ' .. epoch, 'PX', ARGV[7])
if quota > 0 then
  redis.call('ZADD', KEYS[4], seq, seq)
  redis.call('PEXPIRE', KEYS[4], max_age * 2)
end
-- ARGV[13] is PUBLISH, or SPUBLISH in a cluster (the channel shares the keys' slot);
-- ARGV[12] names the inbox on a node-wide inbox channel.
redis.call(ARGV[13], ARGV[1], ARGV[12] .. 'm ' .. seq .. ' ' .. epoch .. ' ' .. now .. ' ' .. ARGV[8] .. ' ' .. frame)
return {seq, epoch, 0, now}
