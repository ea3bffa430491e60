//! The application's backend in the loop: the server API it calls (on its own port, with
//! API keys) and the hooks the gateway calls on it (docs/backend.md).

use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The server API: publish, disconnect, presence, history... for the backend only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiConfig {
    /// Address of the API's own port; unset: no server API. Never the public port.
    pub listen: Option<SocketAddr>,
    /// File of API keys, one per line (blank lines and `#` comments ignored); re-read
    /// when it changes, so keys rotate without a restart.
    pub keys_file: Option<PathBuf>,
    /// API keys given inline (tests, local runs); added to those of `keysFile`.
    pub keys: Vec<String>,
    /// How often `keysFile` is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// `from` of messages the API publishes when the request names none.
    pub default_sender: String,
    /// Most rooms one `broadcast` may name.
    pub max_broadcast_rooms: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: None,
            keys_file: None,
            keys: Vec::new(),
            reload_interval: Duration::from_secs(10),
            default_sender: "system".into(),
            max_broadcast_rooms: 1000,
        }
    }
}

/// What the gateway does when a hook cannot be reached, times out or answers garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailurePolicy {
    /// Refuse what the hook was asked about (`unavailable` to the client, 503 at connect).
    Refuse,
    /// Go ahead as if the hook had allowed it.
    Allow,
}

/// One decision hook: an HTTP POST of JSON whose answer allows, refuses or changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HookConfig {
    /// `http://host:port/path` of the backend endpoint.
    pub url: String,
    /// Deadline of one call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra attempts after a failure that cannot have had an effect (no connection, a
    /// 5xx); none after a timeout or a connection lost once the request went out.
    pub retries: u32,
    /// Calls in flight at once on a pod; a call finding none free waits for one up to
    /// `timeout`, then fails `busy` (taking the failure policy). Bounds the sockets a
    /// slow backend costs the pod: each call in flight holds one.
    pub max_concurrent: u32,
    /// On failure (after retries, or while the breaker is open).
    pub on_failure: FailurePolicy,
    /// Consecutive failures that open the circuit breaker (calls fail at once, taking the
    /// failure policy, for `breakerCooldown`); 0 disables the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one call tries again.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Room-name patterns (`name` or `prefix*`) whose sends the `send` hook is asked
    /// about; empty: every room. Only `send` reads it: the `join` hook is asked about every
    /// room of a namespace with `join: backend`.
    pub rooms: Vec<String>,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            url: String::new(),
            timeout: Duration::from_millis(500),
            retries: 1,
            max_concurrent: 256,
            on_failure: FailurePolicy::Refuse,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            rooms: Vec::new(),
        }
    }
}

/// Notifications after the fact (message stored, connection opened or closed), posted in
/// batches from a bounded queue and retried until the backend takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EventsConfig {
    /// `http://host:port/path` receiving `{"events": [...]}`.
    pub url: String,
    /// Deadline of one post.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Events held while the backend is slow or down; beyond it the oldest are dropped
    /// (counted in `chatgateway_hook_events_dropped_total`).
    pub queue_size: usize,
    /// Most events per post.
    pub batch: usize,
    /// Which events: `message`, `connected`, `disconnected`.
    pub kinds: Vec<String>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            url: String::new(),
            timeout: Duration::from_secs(2),
            queue_size: 10_000,
            batch: 100,
            kinds: vec!["message".into(), "connected".into(), "disconnected".into()],
        }
    }
}

/// Hooks the gateway calls on the backend; each is off unless configured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HooksConfig {
    /// Before the upgrade: refuse, or add rooms to auto-join and data for `welcome`.
    pub connect: Option<HookConfig>,
    /// A join in a namespace with `join: backend`: allow (with or without send) or refuse.
    pub join: Option<HookConfig>,
    /// Every send to a matching room: refuse, or replace the body before it is stored.
    pub send: Option<HookConfig>,
    /// A `refresh`: refuse, or set the expiry.
    pub refresh: Option<HookConfig>,
    /// Notifications after the fact.
    pub events: Option<EventsConfig>,
}

/// Event kinds the gateway can notify.
pub const EVENT_KINDS: [&str; 3] = ["message", "connected", "disconnected"];
