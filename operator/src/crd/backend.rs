//! `gateway.api` and `gateway.hooks`: the application's backend in the loop (docs/backend.md).
//! Field names follow the gateway's `api` and `hooks` config; the API keys come from a
//! Secret mounted as the gateway's `api.keysFile`, and the API port gets a Service of its
//! own, never the public one.

use super::{default_true, SecretKeyRef, DURATION_PATTERN};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API's port when the spec names none.
pub const DEFAULT_API_PORT: i32 = 9090;

/// The server API (publish, disconnect, presence, history...) for the backend only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.enabled) && !self.enabled) || has(self.keysSecretRef)",
     "message": "gateway.api needs keysSecretRef: the API keys, one per line, in a Secret"},
    {"rule": "!has(self.port) || self.port != 8080",
     "message": "gateway.api.port must not be 8080, the gateway's public port: the server API needs a port of its own"}
]))]
pub struct ApiSpec {
    /// Serve the API; default true when this section is present. Set false to stop serving
    /// it and remove its Service.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Container port of the API, also the port of the `<name>-api` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535), extend("default" = DEFAULT_API_PORT))]
    pub port: Option<i32>,
    /// Secret key holding the API keys, one per line (blank lines and `#` comments
    /// ignored), mounted as the gateway's `api.keysFile`. The gateway re-reads it when the
    /// Secret changes: keys rotate without a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_secret_ref: Option<SecretKeyRef>,
    /// How often the gateway checks the keys file for changes, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "10s"))]
    pub reload_interval: Option<String>,
    /// `from` of messages the API publishes when the request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), extend("default" = "system"))]
    pub default_sender: Option<String>,
    /// Who may reach the API port when `spec.networkPolicy` is on; empty: the pods of the
    /// gateway's own namespace. Never opened to any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub allow_from: Vec<NetworkPolicyPeer>,
}

/// What the gateway does when a hook cannot be reached, times out or answers garbage.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FailurePolicySpec {
    /// Refuse what the hook was asked about (`unavailable`, 503 at connect).
    Refuse,
    /// Go ahead as if the hook had allowed it.
    Allow,
}

/// One decision hook: the gateway POSTs JSON to `url` and the answer allows, refuses or
/// changes. Unset fields keep the gateway's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookSpec {
    /// `http://host:port/path` of the backend endpoint (TLS is a sidecar's job).
    #[schemars(length(min = 8, max = 2048), pattern(r"^http://.+"))]
    pub url: String,
    /// Deadline of one call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "500ms"))]
    pub timeout: Option<String>,
    /// Extra attempts after a failure that cannot have had an effect (no connection, a
    /// 5xx); never after a timeout or a connection lost once the request went out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10), extend("default" = 1))]
    pub retries: Option<i32>,
    /// Calls in flight at once per pod (each holds a socket to the backend); a call
    /// finding none free waits up to `timeout`, then fails (`busy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000), extend("default" = 256))]
    pub max_concurrent: Option<i32>,
    /// On failure (after retries, or while the breaker is open): `refuse` or `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "refuse"))]
    pub on_failure: Option<FailurePolicySpec>,
    /// Consecutive failures that open the circuit breaker (calls then fail at once for
    /// `breakerCooldown`); 0 disables the breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000), extend("default" = 5))]
    pub breaker_failures: Option<i32>,
    /// How long the breaker stays open before one call tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "5s"))]
    pub breaker_cooldown: Option<String>,
    /// Room-name patterns (`name` or `prefix*`) whose sends the `send` hook is asked
    /// about; empty: every room. (The `join` hook is asked about every room of a
    /// namespace with `join: backend`.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub rooms: Vec<String>,
}

/// Kinds of notification.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EventKindSpec {
    /// A message was stored.
    Message,
    /// A connection opened.
    Connected,
    /// A connection closed.
    Disconnected,
}

/// Notifications after the fact, posted in batches from a bounded queue and retried until
/// the backend takes them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsHookSpec {
    /// `http://host:port/path` receiving `{"events": [...]}`.
    #[schemars(length(min = 8, max = 2048), pattern(r"^http://.+"))]
    pub url: String,
    /// Deadline of one post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "2s"))]
    pub timeout: Option<String>,
    /// Events held while the backend is slow or down; beyond it the oldest are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000), extend("default" = 10000))]
    pub queue_size: Option<i64>,
    /// Most events per post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000), extend("default" = 100))]
    pub batch: Option<i64>,
    /// Which events; unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "default" = ["message", "connected", "disconnected"],
        "x-kubernetes-list-type" = "set"
    ))]
    pub kinds: Option<Vec<EventKindSpec>>,
}

/// Hooks the gateway calls on the backend; each is off unless set.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HooksSpec {
    /// Before the upgrade: refuse, or add rooms to auto-join and data for `welcome`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<HookSpec>,
    /// A join in a namespace with `join: backend`: allow (with or without send) or refuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<HookSpec>,
    /// Every send to a matching room: refuse, or replace the body before it is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<HookSpec>,
    /// A `refresh`: refuse, or set an earlier expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<HookSpec>,
    /// Notifications after the fact (message stored, connection opened or closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsHookSpec>,
}
