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
pub static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/publish.lua")));

/// Reads history. Returns {epoch, top, first, seq1, frame1, seq2, frame2, ...}.
/// KEYS: meta, stream. ARGV: start id, end id, reverse (0/1), limit, max age ms,
/// epoch candidate.
pub static HISTORY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/history.lua")));

/// Adds a connection to a room's presence; announces the user's first one.
/// KEYS: pc, pu. ARGV: member, user, expiry ms, channel, join frame.
pub static PRESENCE_JOIN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_join.lua")));

/// Removes a connection from a room's presence; announces the user's last one leaving.
/// KEYS: pc, pu. ARGV: member, user, channel, leave frame.
pub static PRESENCE_LEAVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_leave.lua")));

/// Drops expired presence entries (announcing users who left with them), then lists
/// the users present. KEYS: pc, pu. ARGV: now ms, channel, room.
pub static PRESENCE_LIST: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_list.lua")));

/// Moves a counter forward only. KEYS: key. ARGV: value, ttl ms.
pub static MAX_SET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/max_set.lua")));
