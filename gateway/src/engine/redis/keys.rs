//! Key and channel names of the engine per mode (docs/architecture.md has the table):
//! every key of a room shares the room's hash tag, so each script touches one cluster
//! slot; in a cluster an inbox's keys and its channel share its bucket's tag instead.

/// Inbox buckets in cluster mode: an inbox's keys carry the tag of its bucket, and each
/// bucket has one shard channel every node subscribes (see [`Keys::route`]).
pub(crate) const INBOX_BUCKETS: u32 = 256;

/// Where a room's traffic is published: its channel, what its payloads start with, and
/// the publish command of the mode.
pub(crate) struct Route {
    /// The channel.
    pub(crate) channel: String,
    /// `` for a room channel; `r <room> ` on a node-wide inbox channel.
    pub(crate) prefix: String,
    /// `PUBLISH`, or `SPUBLISH` (sharded) in a Redis Cluster.
    pub(crate) command: &'static str,
}

/// Key and channel names of the engine. Every key of a room shares the room's hash tag
/// (one cluster slot, so each script stays single-slot); in cluster mode an inbox's keys
/// share its bucket's tag instead, which its bucket's channel carries too.
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
    /// Redis Cluster layout: sharded channels named with hash tags, inbox buckets.
    pub(crate) cluster: bool,
}

/// The bucket of an inbox (FNV-1a of its name: stable across processes and versions).
pub(crate) fn bucket(room: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in room.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % INBOX_BUCKETS
}

impl Keys {
    fn room(&self, room: &str, suffix: &str) -> String {
        if self.cluster && crate::protocol::is_inbox(room) {
            // `#` is never in a room name: no room's tag can equal a bucket's.
            format!("{}:{{#{}}}:{room}:{suffix}", self.prefix, bucket(room))
        } else {
            format!("{}:{{{room}}}:{suffix}", self.prefix)
        }
    }
    pub(crate) fn meta(&self, room: &str) -> String {
        self.room(room, "m")
    }
    pub(crate) fn stream(&self, room: &str) -> String {
        self.room(room, "s")
    }
    pub(crate) fn dedup(&self, room: &str, from: &str, msg_id: &str) -> String {
        self.room(room, &format!("d:{from}\0{msg_id}"))
    }
    pub(crate) fn quota(&self, room: &str, from: &str) -> String {
        self.room(room, &format!("q:{from}"))
    }
    pub(crate) fn presence_conns(&self, room: &str) -> String {
        self.room(room, "pc")
    }
    pub(crate) fn presence_users(&self, room: &str) -> String {
        self.room(room, "pu")
    }
    pub(crate) fn room_of_presence_users(&self, key: &str) -> Option<String> {
        let inner = key
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:pu")?;
        Some(inner.to_string())
    }
    /// The channel of a room (not an inbox: see [`route`](Self::route)).
    pub(crate) fn channel(&self, room: &str) -> String {
        if self.cluster {
            format!("{}:{{{room}}}:c", self.prefix)
        } else {
            format!("{}:c:{room}", self.prefix)
        }
    }
    /// The room a room channel belongs to.
    pub(crate) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let rest = channel.strip_prefix(&self.prefix)?;
        if self.cluster {
            rest.strip_prefix(":{")?.strip_suffix("}:c")
        } else {
            rest.strip_prefix(":c:")
        }
    }
    /// The node-wide inbox channels every node subscribes: one (single, sentinel), or
    /// one per bucket (cluster: each in its bucket's slot).
    pub(crate) fn inbox_channels(&self) -> Vec<String> {
        if self.cluster {
            (0..INBOX_BUCKETS)
                .map(|b| format!("{}:{{#{b}}}:i", self.prefix))
                .collect()
        } else {
            vec![format!("{}:i", self.prefix)]
        }
    }
    /// Whether a channel is a node-wide inbox channel.
    pub(crate) fn is_inbox_channel(&self, channel: &str) -> bool {
        channel
            .strip_prefix(&self.prefix)
            .is_some_and(|rest| rest == ":i" || (rest.starts_with(":{#") && rest.ends_with("}:i")))
    }
    /// Where a room's (or an inbox's) traffic goes. An inbox has no channel of its own:
    /// its messages go to the node-wide inbox channel (its bucket's in a cluster) with the
    /// inbox named in the payload, and each node hands them to the users it holds. No node
    /// subscribes per user.
    pub(crate) fn route(&self, room: &str) -> Route {
        let command = if self.cluster { "SPUBLISH" } else { "PUBLISH" };
        if crate::protocol::is_inbox(room) {
            let channel = if self.cluster {
                format!("{}:{{#{}}}:i", self.prefix, bucket(room))
            } else {
                format!("{}:i", self.prefix)
            };
            Route {
                channel,
                prefix: format!("r {room} "),
                command,
            }
        } else {
            Route {
                channel: self.channel(room),
                prefix: String::new(),
                command,
            }
        }
    }
    pub(crate) fn session(&self, token: &str) -> String {
        format!("{}:sess:{token}", self.prefix)
    }
    pub(crate) fn inbox_cursor(&self, user: &str) -> String {
        format!("{}:ic:{user}", self.prefix)
    }
    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }
    pub(crate) fn admission(&self, second: u64) -> String {
        format!("{}:adm:{second}", self.prefix)
    }
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}
