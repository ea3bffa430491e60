//! Lua scripts of the Redis engine. Each runs atomically, so for example publish order
//! equals seq order, and a presence change and its announcement never come apart.
//!
//! Key layout (`P` = key prefix, `R` = room; `{R}` is a hash tag so all keys of a room
//! share one cluster slot):
//!   P:{R}:m   hash   epoch, seq (the top)
//!   P:{R}:s   stream entries `<seq>-1` with fields f (the msg frame) and t (append ms)
//!   P:{R}:d:<from>\0<msg_id>   string   seq, expires after the dedup window
//!   P:{R}:pc  zset   "<user>\0<conn>" scored by expiry ms
//!   P:{R}:pu  hash   user -> connection count
//!   P:c:R     channel: "m <seq> <epoch> <ts> <traceparent|-> <frame>" or "p <frame>"

use redis::Script;
use std::sync::LazyLock;

/// Dedup check, next seq, append with retention, PUBLISH. Returns {seq, epoch, dup}.
/// KEYS: meta, stream, dedup. ARGV: channel, epoch candidate, frame head, frame tail,
/// max messages, max age ms, dedup window ms, traceparent (or `-`).
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
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
"#,
    )
});

/// Reads history. Returns {epoch, top, first, seq1, frame1, seq2, frame2, ...}.
/// KEYS: meta, stream. ARGV: start id, end id, reverse (0/1), limit, max age ms,
/// epoch candidate.
pub static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local max_age = tonumber(ARGV[5])
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
  redis.call('PEXPIRE', KEYS[1], max_age * 2 + 604800000)
  top = 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 32)) do
  if now - tonumber(e[2][4]) > max_age then redis.call('XDEL', KEYS[2], e[1]) else break end
end
local first = top + 1
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if oldest[1] then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
local out = {epoch, top, first}
local limit = tonumber(ARGV[4])
if limit > 0 then
  local entries
  if ARGV[3] == '1' then
    entries = redis.call('XREVRANGE', KEYS[2], ARGV[2], ARGV[1], 'COUNT', limit)
  else
    entries = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[2], 'COUNT', limit)
  end
  local n = #entries
  for i = 1, n do
    local e = entries[i]
    if ARGV[3] == '1' then e = entries[n + 1 - i] end
    table.insert(out, tonumber(string.match(e[1], '^(%d+)')))
    table.insert(out, e[2][2])
  end
end
return out
"#,
    )
});

/// Adds a connection to a room's presence; announces the user's first one.
/// KEYS: pc, pu. ARGV: member, user, expiry ms, channel, join frame.
pub static PRESENCE_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
    redis.call('PUBLISH', ARGV[4], 'p ' .. ARGV[5])
  end
end
return 1
"#,
    )
});

/// Removes a connection from a room's presence; announces the user's last one leaving.
/// KEYS: pc, pu. ARGV: member, user, channel, leave frame.
pub static PRESENCE_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    redis.call('PUBLISH', ARGV[3], 'p ' .. ARGV[4])
  end
end
return 1
"#,
    )
});

/// Drops expired presence entries (announcing users who left with them), then lists
/// the users present. KEYS: pc, pu. ARGV: now ms, channel, room.
pub static PRESENCE_LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[1], m)
  local cut = string.find(m, '\0', 1, true)
  if cut then
    local user = string.sub(m, 1, cut - 1)
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('PUBLISH', ARGV[2], 'p ' .. cjson.encode({type = 'presence', room = ARGV[3], user = user, event = 'leave'}))
    end
  end
end
return redis.call('HKEYS', KEYS[2])
"#,
    )
});

/// Moves a counter forward only. KEYS: key. ARGV: value, ttl ms.
pub static MAX_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#,
    )
});
