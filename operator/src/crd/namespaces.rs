//! `gateway.namespaces` and `gateway.defaultNamespace`: the gateway's room namespaces
//! (docs/configuration.md "Namespaces"), typed so that `kubectl explain` documents them and
//! the schema checks the policy spellings. Relations (`join: backend` without the hook)
//! are the gateway's own validation, run by the operator before anything is applied.
//!
//! The gateway writes the default namespace as `prefix: ""`. The CRD gives it a field of
//! its own instead: some API servers (v1.20.2, found by e2e/chart/test_envtest.py) validate `""`
//! in a non-nullable string as null and refuse the object ("prefix in body must be of type
//! string: \"null\""), and a list keyed by `prefix` needs a non-null key.

use super::RetentionSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of `join`: the gateway's `JoinPolicy` spellings.
pub const JOIN_PATTERN: &str = r"^(public|grant|backend|claim:.+)$";
/// Pattern of `dm`: the gateway's `DmPolicy` spellings.
pub const DM_PATTERN: &str = r"^(anyone|sharedRoom|claim:.+)$";

/// The rules of the rooms whose names start with `prefix`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSpec {
    /// Room-name prefix, e.g. `team:`; `user:` is the users' inboxes (direct messages). Not
    /// empty: the rooms no prefix matches follow `gateway.defaultNamespace`.
    #[schemars(length(min = 1, max = 128))]
    pub prefix: String,
    /// The rules.
    #[serde(flatten)]
    pub rules: NamespaceRules,
}

/// What a namespace allows and keeps. Unset fields keep the gateway's defaults (today's
/// public lobby).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRules {
    /// Who may join after the token's own grants: `public`, `grant` (only the rooms claim or
    /// a subscription token), `claim:<name>` (the token claim `<name>` lists the room's
    /// name after the prefix), or `backend` (reserved for a backend join hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(JOIN_PATTERN), length(max = 260), extend("default" = "public"))]
    pub join: Option<String>,
    /// Who may send: every member, only members whose grant includes `send`, or nobody on
    /// a socket (the backend publishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "members"))]
    pub send: Option<SendPolicySpec>,
    /// `history` without joining, for whoever may join (off: every reader shows up in
    /// presence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub history_without_join: Option<bool>,
    /// Keep messages (history, resume); false: ephemeral, delivered live only (typing
    /// indicators, cursors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub keep_history: Option<bool>,
    /// Retention of this namespace's rooms; unset: `gateway.history` (`gateway.inbox` for
    /// `user:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// Track presence (presence entries, the `presence` command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub presence: Option<bool>,
    /// Announce joins and leaves (`presence` pushes) where presence is tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub join_leave_events: Option<bool>,
    /// Largest `send` body in bytes; 0: only `limits.maxFrameBytes` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16777216), extend("default" = 0))]
    pub max_body_bytes: Option<i64>,
    /// Direct messages (`user:` only): `anyone`, `sharedRoom` (the recipient is present in
    /// a room the sender joined) or `claim:<name>` (the sender's claim lists the recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DM_PATTERN), length(max = 260), extend("default" = "anyone"))]
    pub dm: Option<String>,
    /// Messages one sender may have in one recipient's inbox at a time (`user:` only);
    /// 0: no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000), extend("default" = 100))]
    pub dm_quota: Option<i64>,
}

/// Who may send to a namespace's rooms.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SendPolicySpec {
    /// Every member.
    Members,
    /// Members whose grant includes `send`.
    Grant,
    /// Nobody on a socket.
    None,
}
