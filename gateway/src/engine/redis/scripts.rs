//! Lua scripts of the Redis engine. Each runs atomically, so for example publish order
//! equals seq order, and a presence change and its announcement never come apart.
//!
//! Key layout (`P` = key prefix, `R` = room; `{R}` is a hash tag so all keys of a room
//! share one cluster slot):
//! ```text
//! P:{R}:m   hash   epoch, seq (the top), e (until when the stream was last given to live)
//! P:{R}:s   stream entries <seq>-1 with fields f (the msg frame) and t (append ms)
//! P:{R}:d:<from>\0<msg_id>   string   "<seq> <epoch>", expires after the dedup window
//! P:{R}:q:<from>  zset   seqs of the sender's retained messages (inboxes with a DM quota)
//! P:{R}:pc  zset   "<user>\0<conn>" scored by expiry ms
//! P:{R}:pu  hash   user -> connection count
//! P:nr:<user>  hash  t (tokens), at (ms): the user's room starts (`newRoomsPerHour`)
//! P:c:R     channel: "m <seq> <epoch> <ts> <traceparent|-> <frame>", "p <frame>"
//!           (presence), or "e <ts> <traceparent|-> <frame>" (ephemeral, never stored)
//! ```

use redis::Script;
use std::sync::LazyLock;

/// The epoch rule, dedup check, DM quota, next seq, append with retention, PUBLISH.
/// Returns {seq, epoch, code, ts}: code 0 appended, 1 duplicate, 2 over the sender's
/// quota. KEYS: meta, stream, dedup, sender quota. ARGV: channel, epoch candidate, frame
/// head, frame tail, max messages, max age ms, dedup window ms, traceparent (or `-`),
/// epoch this node saw (or ``), seq this node saw in it, quota (0: none).
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/trim.lua"),
        include_str!("lua/publish.lua")
    ))
});

/// Reads a page of history, creating nothing. Returns {epoch (`` without meta), top,
/// first, more, seq1, frame1, seq2, frame2, ...}. KEYS: meta, stream. ARGV: start id, end
/// id, reverse (0/1), limit, max age ms, max bytes (0: no cap).
pub static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/trim.lua"),
        include_str!("lua/head.lua"),
        include_str!("lua/history.lua")
    ))
});

/// The heads of several rooms: for each, what [`HISTORY`] returns for a page of no
/// messages, {epoch, top, first, 0}. KEYS: meta, stream per room. ARGV: max age ms per
/// room. Keys of several rooms in one call only outside a cluster.
pub static HEADS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/trim.lua"),
        include_str!("lua/head.lua"),
        include_str!("lua/heads.lua")
    ))
});

/// The epoch rule on its own: a new epoch if the room is still in the given epoch below
/// the given seq. Returns {bumped (0/1), epoch}. KEYS: meta, stream. ARGV: epoch seen, seq
/// seen, new epoch, meta ttl ms.
pub static EPOCH_BUMP: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/epoch_bump.lua")));

/// Adds a connection to a room's presence; announces the user's first one. Returns the
/// room's head as [`HISTORY`] does with no messages: {epoch, top, first, 0}.
/// KEYS: pc, pu, meta, stream. ARGV: member, user, expiry ms, channel, join frame, key
/// ttl ms, publish command, channel prefix, max age ms.
pub static PRESENCE_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/trim.lua"),
        include_str!("lua/head.lua"),
        include_str!("lua/presence_join.lua")
    ))
});

/// Removes connections from rooms' presence; announces each user's last one leaving.
/// Any number of leaves, in order: KEYS two per leave (pc, pu), ARGV six per leave
/// (member, user, channel, leave frame or `` for none, publish command, channel prefix).
/// Keys of several rooms in one call only outside a cluster (one slot per call there).
pub static PRESENCE_LEAVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_leave.lua")));

/// Drops expired presence entries (announcing users who left with them) and returns the
/// number of users present and up to `limit` of them; a node refreshing its connections
/// first passes their members and a key ttl. KEYS: pc, pu. ARGV: now ms, expiry ms, key
/// ttl ms (0: leave), channel (``: no announcement), room, publish command, payload
/// prefix, limit (0: the count alone, -1: all), member...
pub static PRESENCE_SWEEP: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_sweep.lua")));

/// Advances a user's inbox cursor `"<seq> <epoch>"`. KEYS: cursor. ARGV: seq, epoch, ttl ms.
pub static INBOX_ACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/inbox_ack.lua")));

/// Takes a stored session if it is the given user's, leaving [`SESSION_TAKEN`] in its
/// place (or nothing, to drop it); leaves another user's untouched. Returns the record's
/// JSON, 0 (another user's) or nil (none, or taken already). KEYS: session. ARGV: user,
/// [`SESSION_TAKEN`], `1` to leave it (`0`: delete).
pub static SESSION_TAKE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/session_take.lua")));

/// What a taken session's key holds until the session would have expired (no JSON, so no
/// record): a save finding it there puts it back.
pub const SESSION_TAKEN: &str = "taken";

/// Takes one of a user's room starts from their token bucket (`limits.newRoomsPerHour`,
/// one for the whole cluster). Returns the tokens left as a string (at least -burst).
/// KEYS: the bucket. ARGV: now ms, rate per second, burst.
pub static ROOM_STARTS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/room_starts.lua")));
