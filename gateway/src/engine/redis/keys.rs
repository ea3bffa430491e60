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
    /// What channel names start with: the prefix, and on a database other than 0 its
    /// number (`chatgw@2`). Pub/sub ignores databases: two deployments on one Redis that
    /// differ only by database would otherwise hear each other's messages and control
    /// commands.
    channels: String,
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

// Names are joined with `concat` (one allocation of the exact size) rather than
// `format!`: several are made for every Redis command, and `format!` of a name that
// starts with an argument starts from an empty buffer and grows it, a reallocation and a
// copy each time (1.6% of the gateway's CPU in a churn of connects).
impl Keys {
    /// The names of a deployment with key prefix `prefix` on database `db`.
    pub(crate) fn new(prefix: &str, db: i64, cluster: bool) -> Keys {
        let channels = match db {
            0 => prefix.to_string(),
            n => format!("{prefix}@{n}"),
        };
        Keys {
            prefix: prefix.to_string(),
            channels,
            cluster,
        }
    }

    fn room(&self, room: &str, suffix: &str) -> String {
        if self.cluster && crate::protocol::is_inbox(room) {
            // `#` is never in a room name: no room's tag can equal a bucket's.
            format!("{}:{{#{}}}:{room}:{suffix}", self.prefix, bucket(room))
        } else {
            [&self.prefix, ":{", room, "}:", suffix].concat()
        }
    }
    pub(crate) fn meta(&self, room: &str) -> String {
        self.room(room, "m")
    }
    pub(crate) fn stream(&self, room: &str) -> String {
        self.room(room, "s")
    }
    pub(crate) fn dedup(&self, room: &str, from: &str, msg_id: &str) -> String {
        self.room(room, &["d:", from, "\0", msg_id].concat())
    }
    pub(crate) fn quota(&self, room: &str, from: &str) -> String {
        self.room(room, &["q:", from].concat())
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
            [&self.channels, ":{", room, "}:c"].concat()
        } else {
            [&self.channels, ":c:", room].concat()
        }
    }
    /// The room a room channel belongs to.
    pub(crate) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let rest = channel.strip_prefix(&self.channels)?;
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
                .map(|b| format!("{}:{{#{b}}}:i", self.channels))
                .collect()
        } else {
            vec![format!("{}:i", self.channels)]
        }
    }
    /// Whether a channel is a node-wide inbox channel.
    pub(crate) fn is_inbox_channel(&self, channel: &str) -> bool {
        channel
            .strip_prefix(&self.channels)
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
                format!("{}:{{#{}}}:i", self.channels, bucket(room))
            } else {
                [&self.channels, ":i"].concat()
            };
            Route {
                channel,
                prefix: ["r ", room, " "].concat(),
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
        [&self.prefix, ":sess:", token].concat()
    }
    pub(crate) fn inbox_cursor(&self, user: &str) -> String {
        [&self.prefix, ":ic:", user].concat()
    }
    pub(crate) fn room_starts(&self, user: &str) -> String {
        [&self.prefix, ":nr:", user].concat()
    }
    pub(crate) fn node(&self, id: &str) -> String {
        [&self.prefix, ":node:", id].concat()
    }
    pub(crate) fn admission(&self, second: u64) -> String {
        format!("{}:adm:{second}", self.prefix)
    }
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(cluster: bool) -> Keys {
        Keys::new("cg", 0, cluster)
    }

    #[test]
    fn names_of_a_room_follow_the_documented_layout() {
        for cluster in [false, true] {
            let k = keys(cluster);
            assert_eq!(k.meta("lobby"), "cg:{lobby}:m");
            assert_eq!(k.stream("lobby"), "cg:{lobby}:s");
            assert_eq!(k.presence_conns("lobby"), "cg:{lobby}:pc");
            assert_eq!(k.presence_users("lobby"), "cg:{lobby}:pu");
            assert_eq!(k.dedup("lobby", "ann", "m1"), "cg:{lobby}:d:ann\0m1");
            assert_eq!(k.quota("lobby", "ann"), "cg:{lobby}:q:ann");
            assert_eq!(
                k.room_of_presence_users("cg:{lobby}:pu").as_deref(),
                Some("lobby")
            );
            let channel = k.channel("lobby");
            assert_eq!(k.room_of_channel(&channel), Some("lobby"));
            let route = k.route("lobby");
            assert_eq!((route.channel, route.prefix), (channel, String::new()));
            assert_eq!(k.session("t0k"), "cg:sess:t0k");
            assert_eq!(k.inbox_cursor("ann"), "cg:ic:ann");
            assert_eq!(k.room_starts("ann"), "cg:nr:ann");
            assert_eq!(k.node("n1"), "cg:node:n1");
            assert_eq!(k.admission(7), "cg:adm:7");
            assert_eq!(k.nodes(), "cg:nodes");
        }
        assert_eq!(keys(false).channel("lobby"), "cg:c:lobby");
        assert_eq!(keys(true).channel("lobby"), "cg:{lobby}:c");
    }

    #[test]
    fn channels_on_a_database_other_than_0_carry_it_and_keys_do_not() {
        let k = Keys::new("cg", 2, false);
        assert_eq!(k.meta("lobby"), "cg:{lobby}:m");
        assert_eq!(k.session("t0k"), "cg:sess:t0k");
        assert_eq!(k.channel("lobby"), "cg@2:c:lobby");
        assert_eq!(k.room_of_channel("cg@2:c:lobby"), Some("lobby"));
        assert_eq!(k.room_of_channel("cg:c:lobby"), None, "database 0's");
        assert_eq!(k.inbox_channels(), ["cg@2:i"]);
        assert!(k.is_inbox_channel("cg@2:i") && !k.is_inbox_channel("cg:i"));
        assert_eq!(k.route("user:ann").channel, "cg@2:i");
        assert_eq!(Keys::new("cg", 0, false).channel("lobby"), "cg:c:lobby");
    }

    #[test]
    fn an_inbox_goes_to_the_node_wide_channel_and_in_a_cluster_to_its_bucket() {
        let inbox = "user:ann";
        assert!(crate::protocol::is_inbox(inbox));
        let single = keys(false);
        assert_eq!(single.meta(inbox), "cg:{user:ann}:m");
        let route = single.route(inbox);
        assert_eq!(
            (route.channel.as_str(), route.prefix.as_str()),
            ("cg:i", "r user:ann ")
        );
        assert_eq!(route.command, "PUBLISH");
        assert!(single.is_inbox_channel(&route.channel));
        let cluster = keys(true);
        let b = bucket(inbox);
        assert_eq!(cluster.meta(inbox), format!("cg:{{#{b}}}:user:ann:m"));
        let route = cluster.route(inbox);
        assert_eq!(route.channel, format!("cg:{{#{b}}}:i"));
        assert_eq!(route.command, "SPUBLISH");
        assert!(cluster.is_inbox_channel(&route.channel));
        assert!(cluster.inbox_channels().contains(&route.channel));
    }
}
