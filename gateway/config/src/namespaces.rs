//! Room namespaces: a room-name prefix (`team:`, `game:`, `user:` for inboxes, and the
//! default namespace with no prefix) with its own rules — who may join, send and read
//! history, whether messages are kept, presence, join/leave events and limits. The longest
//! matching prefix wins; a room matching none belongs to the default namespace.

use crate::RetentionConfig;
use serde::{Deserialize, Serialize};

/// Prefix of users' inboxes: the namespace whose `dm` rules apply to direct messages.
pub const INBOX_PREFIX: &str = "user:";

/// Who may join a room (after the token's own grants, see docs/protocol.md "Permissions").
/// Written as a string: `public`, `grant`, `backend`, or `claim:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum JoinPolicy {
    /// Any authenticated user.
    Public,
    /// Only a grant: the connection token's rooms claim or a subscription token.
    Grant,
    /// Users whose token claim (named here) lists the room's name after the prefix
    /// (`team:blue` needs `"blue"` in the claim; `*` at the end of an entry matches a prefix).
    Claim(String),
    /// The application's backend decides (the `join` hook).
    Backend,
}

impl TryFrom<String> for JoinPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "public" => Ok(JoinPolicy::Public),
            "grant" => Ok(JoinPolicy::Grant),
            "backend" => Ok(JoinPolicy::Backend),
            other => match other.strip_prefix("claim:") {
                Some(claim) if !claim.is_empty() => Ok(JoinPolicy::Claim(claim.into())),
                _ => Err(format!(
                    "join policy {other:?}: expected public, grant, backend or claim:<name>"
                )),
            },
        }
    }
}

impl From<JoinPolicy> for String {
    fn from(p: JoinPolicy) -> String {
        match p {
            JoinPolicy::Public => "public".into(),
            JoinPolicy::Grant => "grant".into(),
            JoinPolicy::Backend => "backend".into(),
            JoinPolicy::Claim(c) => format!("claim:{c}"),
        }
    }
}

/// Who may send to a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SendPolicy {
    /// Every member (whoever could join).
    Members,
    /// Only members whose grant includes `send` (token rooms claim or subscription token).
    Grant,
    /// Nobody on a socket (announcement rooms; the backend publishes).
    None,
}

/// Who may send a direct message to whom (the `user:` namespace). Written as a string:
/// `anyone`, `sharedRoom`, or `claim:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DmPolicy {
    /// Anyone to anyone.
    Anyone,
    /// Only to users present in a room the sender has joined.
    SharedRoom,
    /// Only senders whose token claim (named here) lists the recipient.
    Claim(String),
}

impl TryFrom<String> for DmPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "anyone" => Ok(DmPolicy::Anyone),
            "sharedRoom" => Ok(DmPolicy::SharedRoom),
            other => match other.strip_prefix("claim:") {
                Some(claim) if !claim.is_empty() => Ok(DmPolicy::Claim(claim.into())),
                _ => Err(format!(
                    "dm policy {other:?}: expected anyone, sharedRoom or claim:<name>"
                )),
            },
        }
    }
}

impl From<DmPolicy> for String {
    fn from(p: DmPolicy) -> String {
        match p {
            DmPolicy::Anyone => "anyone".into(),
            DmPolicy::SharedRoom => "sharedRoom".into(),
            DmPolicy::Claim(c) => format!("claim:{c}"),
        }
    }
}

/// The rules of one namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceConfig {
    /// Room-name prefix, e.g. `team:`; empty for the default namespace.
    pub prefix: String,
    /// Who may join.
    pub join: JoinPolicy,
    /// Who may send.
    pub send: SendPolicy,
    /// Whether `history` works without joining (off: only members read, so every reader
    /// shows up in presence).
    pub history_without_join: bool,
    /// Keep messages (history, resume). Off: ephemeral, delivered live only (typing
    /// indicators, cursors); no seq, nothing stored.
    pub keep_history: bool,
    /// Retention of this namespace's rooms; unset: `history` (or `inbox` for `user:`). A
    /// field the YAML leaves out is that one's too ([`crate::retention`]).
    pub retention: Option<RetentionConfig>,
    /// Track presence (`presence` command, presence entries).
    pub presence: bool,
    /// Announce joins and leaves (`presence` pushes) when presence is tracked.
    pub join_leave_events: bool,
    /// Largest `send` body in bytes; 0: only `limits.maxFrameBytes` applies.
    pub max_body_bytes: usize,
    /// Direct messages (the `user:` namespace only).
    pub dm: DmPolicy,
    /// Messages one sender may have in one recipient's inbox at a time (so a flood from
    /// one sender cannot push everyone else's messages out of it); 0: no quota.
    pub dm_quota: u32,
}

impl Default for NamespaceConfig {
    /// Today's public lobby: anyone joins, members send and read, everything kept.
    fn default() -> Self {
        NamespaceConfig {
            prefix: String::new(),
            join: JoinPolicy::Public,
            send: SendPolicy::Members,
            history_without_join: false,
            keep_history: true,
            retention: None,
            presence: true,
            join_leave_events: true,
            max_body_bytes: 0,
            dm: DmPolicy::Anyone,
            dm_quota: 100,
        }
    }
}

impl NamespaceConfig {
    /// The built-in inbox namespace.
    pub fn inbox() -> Self {
        NamespaceConfig {
            prefix: INBOX_PREFIX.into(),
            ..Default::default()
        }
    }

    /// The part of a room's name after this namespace's prefix.
    pub fn local_name<'a>(&self, room: &'a str) -> &'a str {
        room.strip_prefix(self.prefix.as_str()).unwrap_or(room)
    }
}

/// Finds the namespace of a room: the configured one with the longest matching prefix,
/// else the built-in inbox namespace for `user:` rooms, else the default namespace (the
/// configured one with an empty prefix, or the built-in public lobby).
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// Longest prefix first; always holds a default (`""`) and an inbox (`user:`) entry.
    sorted: Vec<NamespaceConfig>,
}

impl Namespaces {
    /// Builds the lookup from the configured list.
    pub fn new(configured: &[NamespaceConfig]) -> Namespaces {
        let mut sorted = configured.to_vec();
        for builtin in [NamespaceConfig::default(), NamespaceConfig::inbox()] {
            if !sorted.iter().any(|n| n.prefix == builtin.prefix) {
                sorted.push(builtin);
            }
        }
        sorted.sort_by_key(|n| std::cmp::Reverse(n.prefix.len()));
        Namespaces { sorted }
    }

    /// The namespace of `room`.
    pub fn of(&self, room: &str) -> &NamespaceConfig {
        self.sorted
            .iter()
            .find(|n| room.starts_with(n.prefix.as_str()))
            .unwrap_or(&self.sorted[self.sorted.len() - 1])
    }
}

/// Whether `name` matches a grant entry: equal, or `prefix*`.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_builtins_fill_in() {
        let team = NamespaceConfig {
            prefix: "team:".into(),
            join: JoinPolicy::Claim("teams".into()),
            ..Default::default()
        };
        let team_ops = NamespaceConfig {
            prefix: "team:ops:".into(),
            join: JoinPolicy::Grant,
            ..Default::default()
        };
        let ns = Namespaces::new(&[team, team_ops]);
        assert_eq!(ns.of("team:blue").join, JoinPolicy::Claim("teams".into()));
        assert_eq!(ns.of("team:ops:pager").join, JoinPolicy::Grant);
        assert_eq!(ns.of("lobby").join, JoinPolicy::Public);
        assert_eq!(ns.of("lobby").prefix, "");
        assert_eq!(ns.of("user:bob").prefix, "user:");
        assert_eq!(ns.of("team:blue").local_name("team:blue"), "blue");
    }

    #[test]
    fn a_configured_default_replaces_the_builtin() {
        let strict = NamespaceConfig {
            join: JoinPolicy::Grant,
            ..Default::default()
        };
        let ns = Namespaces::new(&[strict]);
        assert_eq!(ns.of("anything").join, JoinPolicy::Grant);
    }

    #[test]
    fn patterns() {
        assert!(matches_pattern("news:*", "news:today"));
        assert!(matches_pattern("a", "a"));
        assert!(!matches_pattern("a", "ab"));
        assert!(matches_pattern("*", "x"));
    }

    #[test]
    fn policies_read_from_yaml() {
        let n: NamespaceConfig = serde_saphyr::from_str(
            "prefix: 'team:'\njoin: claim:teams\nsend: grant\nkeepHistory: false\ndm: sharedRoom\n",
        )
        .expect("yaml");
        assert_eq!(n.join, JoinPolicy::Claim("teams".into()));
        assert_eq!(n.send, SendPolicy::Grant);
        assert!(!n.keep_history);
        assert_eq!(n.dm, DmPolicy::SharedRoom);
        let e =
            serde_saphyr::from_str::<NamespaceConfig>("join: claim:\n").expect_err("empty claim");
        assert!(e.to_string().contains("claim:<name>"), "{e}");
        let back: NamespaceConfig =
            serde_saphyr::from_str(&crate::to_yaml(&n).expect("print")).expect("parse");
        assert_eq!(back, n);
    }
}
