-- Takes a stored session for the user resuming it, in one step: the record is replaced by
-- the mark ARGV[2] (its TTL kept), so that a later save of the same token (the old
-- connection ending after its client resumed elsewhere) does not make it good again;
-- with ARGV[3] '0' (an ended session dropped past keptPerUser, which nothing saves again)
-- it is deleted instead. Another user's record is left as it was (its TTL too). ARGV:
-- user, mark, leave the mark ('1' or '0'). Returns the record's JSON, 0 for another
-- user's, nil for none or one taken already. A record that is not JSON is taken (the
-- caller reports it).
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[2] then return nil end
local ok, rec = pcall(cjson.decode, v)
if ok and type(rec) == 'table' and rec.user ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('DEL', KEYS[1])
end
return v
