-- Takes a stored session for the user resuming it: GET and DEL in one step, and another
-- user's record left as it was (its TTL too). ARGV: user. Returns the record's JSON, 0 for
-- another user's, nil for none. A record that is not JSON is taken (the caller reports it).
local v = redis.call('GET', KEYS[1])
if not v then return nil end
local ok, rec = pcall(cjson.decode, v)
if ok and type(rec) == 'table' and rec.user ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return v
