//! The `gateway` section of the spec: what goes into the gateway's config file, and the
//! Secrets its keys come from. Field names follow the gateway's config (docs/configuration.md).
//! Authentication is in `auth.rs`, room namespaces in `namespaces.rs`.

use super::{
    ApiSpec, AuthSpec, HooksSpec, NamespaceRules, NamespaceSpec, RedisSpec, DURATION_PATTERN,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A key in a Secret of the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Gateway settings (a subset of the gateway config, plus Secret references).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["auth"]))]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.heartbeatInterval) && has(self.heartbeat) && has(self.heartbeat.interval))",
     "message": "set gateway.heartbeat.interval or the old gateway.heartbeatInterval, not both"}
]))]
pub struct GatewaySpec {
    /// Browser origins allowed to open a socket (`server.allowedOrigins`); empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Redis engine; without it each pod runs the single-node memory engine (one pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Client authentication (required: `jwt` keys, or `mode: insecure` for demos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Keep-alive (`heartbeat` in the gateway config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatSpec>,
    /// Deprecated v1alpha1 spelling of `heartbeat.interval` (refused in v1beta1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub heartbeat_interval: Option<String>,
    /// Per-connection limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Room history retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<RetentionSpec>,
    /// Direct-message inbox retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<RetentionSpec>,
    /// Resume sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsSpec>,
    /// Connection rebalancing between pods (`rebalance` in the gateway config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceSpec>,
    /// Admission of new connections (`admission` in the gateway config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<AdmissionSpec>,
    /// Room namespaces (`namespaces` in the gateway config): rules per room-name prefix, the
    /// longest matching prefix wins; keyed by `prefix`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["prefix"]))]
    pub namespaces: Vec<NamespaceSpec>,
    /// Rules of the rooms no `namespaces[].prefix` matches (the gateway's `prefix: ""`
    /// namespace); unset: a public lobby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_namespace: Option<NamespaceRules>,
    /// WebSocket forwarding routes to backend services (`routes` in the gateway config);
    /// the longest matching path prefix wins. Names are unique (the list is keyed by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub routes: Vec<RouteSpec>,
    /// The server API for the application's backend, on a port and a Service of its own
    /// (`api` in the gateway config, docs/backend.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSpec>,
    /// Calls to the application's backend: decisions on connect, join, send and refresh,
    /// and notifications (`hooks` in the gateway config, docs/backend.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksSpec>,
    /// Any other gateway config (docs/configuration.md), merged under the typed fields
    /// above (they win) and checked by the gateway's own validation. Keys the operator
    /// controls are refused: `server.listen`, `node`, `engine`, `redis.url`, `redis.mode`,
    /// `redis.nodes`, `redis.sentinel`, `redis.username`, `redis.password`, `auth`,
    /// `drain.timeout`, `api.listen`, `api.keysFile`, `api.keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub config: Option<serde_json::Value>,
}

/// A free-form object the API server keeps as given (the gateway checks it).
fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Keep-alive settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSpec {
    /// Server WebSocket ping period, e.g. `25s` (the gateway's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub interval: Option<String>,
}

/// Admission of new connections and resumes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionSpec {
    /// Upgrades admitted per second (cluster-wide with Redis, per pod otherwise); over it,
    /// 503 with a jittered Retry-After. 0 = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000), extend("default" = 2000))]
    pub rate: Option<i64>,
    /// Upgrades per second from one client IP (per pod), checked before the token is
    /// verified; 429 beyond. 0 = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000), extend("default" = 50))]
    pub per_ip_rate: Option<i64>,
    /// Burst of upgrades from one client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000), extend("default" = 100))]
    pub per_ip_burst: Option<i64>,
    /// Upgrades per second of one user (per pod), checked before the shared `rate`; 429
    /// beyond. 0 = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000), extend("default" = 5))]
    pub per_user_rate: Option<i64>,
    /// Burst of upgrades of one user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000), extend("default" = 20))]
    pub per_user_burst: Option<i64>,
}

/// One WebSocket forwarding route: authenticate at the gateway, then pipe frames to an
/// upstream. Unset fields keep the gateway's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(self.pathPrefix in ['/ws', '/healthz', '/readyz', '/metrics', '/client.js']) && !['/ws/', '/healthz/', '/readyz/', '/metrics/', '/client.js/'].exists(p, self.pathPrefix.startsWith(p))",
     "message": "routes[].pathPrefix collides with the gateway's own endpoints"}
]))]
pub struct RouteSpec {
    /// Short name, the metrics label (never the path): `[a-z0-9-]`, unique.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9-]+$"))]
    pub name: String,
    /// Requests whose path starts with this (`/bots` matches `/bots` and `/bots/...`).
    #[schemars(length(min = 2, max = 256), pattern(r"^/.+"))]
    pub path_prefix: String,
    /// `ws://host:port/base`, a Service as `name:port` or `name.namespace:port`, or
    /// `localhost:port` for a sidecar.
    #[schemars(length(min = 1, max = 512))]
    pub upstream: String,
    /// Remove `pathPrefix` from the path sent upstream; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
    /// Extra request headers sent upstream.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Send the authenticated user id as `X-Chat-User`; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_user: Option<bool>,
    /// Send the W3C `traceparent` upstream; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_trace: Option<bool>,
    /// Deadline of one dial (TCP connect + WebSocket handshake), e.g. `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub connect_timeout: Option<String>,
    /// Extra dial attempts after a failure; default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,
    /// Wait before the first retry, doubling each time, e.g. `200ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub retry_backoff: Option<String>,
    /// Open connections through this route at most (503 beyond); 0 = unlimited; default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000000))]
    pub max_connections: Option<i64>,
    /// Largest message piped in either direction (close 1009 beyond); default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 67108864))]
    pub max_frame_bytes: Option<i64>,
    /// No frame in either direction this long closes both sides (1001), e.g. `30m`;
    /// `0s` never; default 5m. Raise it for an upstream that stays quiet between events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub idle_timeout: Option<String>,
}

/// Per-connection limits; unset fields keep the gateway's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest accepted WebSocket message in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 16777216))]
    pub max_frame_bytes: Option<i64>,
    /// Sustained commands per second per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub message_rate: Option<i64>,
    /// Commands allowed in a burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub message_burst: Option<i64>,
    /// Sustained commands per second of one user, all their connections on one pod
    /// together; 0 disables the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub user_message_rate: Option<i64>,
    /// One user's commands allowed in a burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub user_message_burst: Option<i64>,
    /// Rooms one connection may join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub rooms_per_connection: Option<i64>,
    /// Open connections per client IP; 0 disables the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub connections_per_ip: Option<i64>,
    /// Open connections of one user on one pod (429 beyond); 0 disables the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub connections_per_user: Option<i64>,
    /// Rooms and inboxes one user's sends may start per hour, on all pods together (past
    /// it, sends go only to rooms with messages); 0 disables the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub new_rooms_per_hour: Option<i64>,
    /// Frames queued per connection before it is closed as a slow consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub outbound_queue_frames: Option<i64>,
    /// Bytes queued per connection before it is closed as a slow consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 1073741824))]
    pub outbound_queue_bytes: Option<i64>,
    /// Consecutive errors before the connection is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_errors_in_row: Option<i64>,
    /// Longest room name in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_room_name: Option<i64>,
    /// Pings, pongs and fragments per second per connection; 0 disables the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub frame_rate: Option<i64>,
    /// Frames other than whole messages allowed in a burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub frame_burst: Option<i64>,
    /// Connections per client IP that are not WebSockets yet; 0 disables the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub handshakes_per_ip: Option<i64>,
    /// Most bytes of messages in one history reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub history_page_bytes: Option<i64>,
    /// Bytes of history read and queued at a time while a replay streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub replay_chunk_bytes: Option<i64>,
    /// Most users a presence reply lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub presence_users: Option<i64>,
    /// How long presence outlives a leave, e.g. `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub presence_linger: Option<String>,
    /// How long a room's presence changes are collected into one frame (at most `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub presence_batch: Option<String>,
    /// How long a busy room's writers wait to send several frames at once (at most `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub fanout_batch: Option<String>,
}

/// Retention of a message stream.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Messages kept per stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_messages: Option<i64>,
    /// Age after which messages are dropped, e.g. `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_age: Option<String>,
}

/// Resume sessions.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionsSpec {
    /// How long a disconnected session can be resumed, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub resume_ttl: Option<String>,
    /// How long a client message id is remembered for de-duplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub dedup_window: Option<String>,
    /// Sessions of ended connections one pod keeps resumable per user (the oldest is
    /// dropped beyond); 0 disables the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub kept_per_user: Option<i64>,
}

/// Connection rebalancing between pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceSpec {
    /// Shed connections from pods well above the mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// How far above the cluster mean, in percent, a pod may be before it sheds
    /// (`rebalance.relThreshold` as a fraction; integers here, as CRDs avoid floats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000), extend("default" = 20))]
    pub tolerance_percent: Option<i32>,
    /// Shed only when a pod is also this many connections above the mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000000), extend("default" = 100))]
    pub abs_threshold: Option<i64>,
    /// Connections shed per second per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000), extend("default" = 5))]
    pub rate: Option<i32>,
    /// How often a pod compares itself with the cluster, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "10s"))]
    pub interval: Option<String>,
}
