//! The `gateway.redis` section: which Redis deployment the gateways share (one server, a
//! Redis Cluster, or a master found through Sentinel) and the Secrets its URL and
//! credentials come from. The mode is the gateway's own `RedisMode` (docs/configuration.md);
//! addresses are not secret and go into the ConfigMap, credentials only into the pods'
//! environment from their Secrets, and the TLS CA and client certificate only into files
//! mounted from their Secrets.

use super::SecretKeyRef;
use chat_gateway_config::RedisMode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a cluster seed or a Sentinel address: `redis://host:port` or `rediss://` (TLS),
/// without credentials (the addresses land in the ConfigMap) and without a path.
/// (No backslashes: the pattern sits in a CEL string literal.)
pub const REDIS_ADDRESS_PATTERN: &str = "^rediss?://[^/@ ]+/?$";

/// CEL rules of `gateway.redis` (`validate::check_redis` says the same in the operator).
pub const SINGLE_NEEDS_URL: &str =
    "gateway.redis.mode single (the default) needs urlSecretRef: the Secret key holding the redis:// URL";
/// Cluster mode without a seed.
pub const CLUSTER_NEEDS_SEEDS: &str =
    "gateway.redis.mode cluster needs nodes (seed URLs, redis://host:port) or urlSecretRef (one seed URL in a Secret)";
/// Sentinel mode without the master's name or a Sentinel.
pub const SENTINEL_NEEDS_MASTER: &str =
    "gateway.redis.mode sentinel needs sentinel.masterName and at least one sentinel.addresses entry";
/// `nodes` outside cluster mode.
pub const NODES_ONLY_CLUSTER: &str = "gateway.redis.nodes applies to mode cluster only";
/// `sentinel` outside sentinel mode.
pub const SENTINEL_ONLY_SENTINEL: &str = "gateway.redis.sentinel applies to mode sentinel only";
/// A URL that sentinel mode would ignore.
pub const NO_URL_WITH_SENTINEL: &str =
    "gateway.redis.urlSecretRef is not used in mode sentinel: the gateway asks sentinel.addresses for the master (its password: passwordSecretRef)";
/// An address the pattern refuses.
pub const BAD_ADDRESS: &str =
    "gateway.redis.nodes and sentinel.addresses are redis://host:port or rediss://host:port (TLS), without credentials or a path: credentials come from the *SecretRef fields";

/// `tls` while every listed node or Sentinel is plain `redis://`.
pub const TLS_NEEDS_REDISS: &str =
    "gateway.redis.tls is for rediss:// (TLS) connections, but every listed address is redis://: list mode cluster's nodes or mode sentinel's sentinel.addresses as rediss://host:port";
/// A client certificate without its key, or a key without its certificate.
pub const CLIENT_CERT_AND_KEY: &str =
    "gateway.redis.tls.clientCertSecretRef and clientKeySecretRef go together: the client certificate and its private key";

/// Redis engine settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.mode) ? self.mode : 'single') != 'single' || has(self.urlSecretRef)",
     "message": SINGLE_NEEDS_URL},
    {"rule": "!has(self.mode) || self.mode != 'cluster' || has(self.urlSecretRef) || (has(self.nodes) && size(self.nodes) > 0)",
     "message": CLUSTER_NEEDS_SEEDS},
    {"rule": "!has(self.mode) || self.mode != 'sentinel' || (has(self.sentinel) && has(self.sentinel.masterName) && has(self.sentinel.addresses) && size(self.sentinel.addresses) > 0)",
     "message": SENTINEL_NEEDS_MASTER},
    {"rule": "!has(self.nodes) || size(self.nodes) == 0 || (has(self.mode) && self.mode == 'cluster')",
     "message": NODES_ONLY_CLUSTER},
    {"rule": "!has(self.sentinel) || (has(self.mode) && self.mode == 'sentinel')",
     "message": SENTINEL_ONLY_SENTINEL},
    {"rule": "!has(self.urlSecretRef) || !has(self.mode) || self.mode != 'sentinel'",
     "message": NO_URL_WITH_SENTINEL},
    // Only the listed addresses can be seen here: a URL in a Secret is checked when the
    // operator reads it (secrets::check), and mode single has nothing else.
    {"rule": "!has(self.tls) || !has(self.mode) || (self.mode != 'cluster' || !has(self.nodes) || size(self.nodes) == 0 || self.nodes.exists(n, n.startsWith('rediss://'))) && (self.mode != 'sentinel' || !has(self.sentinel) || !has(self.sentinel.addresses) || size(self.sentinel.addresses) == 0 || self.sentinel.addresses.exists(a, a.startsWith('rediss://')))",
     "message": TLS_NEEDS_REDISS}
]))]
pub struct RedisSpec {
    /// `single` (one server at the URL), `cluster` (a Redis Cluster, Redis 7 or later) or
    /// `sentinel` (the master Sentinel names, followed across failovers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "redis_mode")]
    pub mode: Option<RedisMode>,
    /// Secret key holding the `redis://` URL (`rediss://` for TLS; it may carry a
    /// password). Required in mode single; in mode cluster the seed when `nodes` is empty;
    /// not used in mode sentinel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// Mode cluster: seed nodes, `redis://host:port` (`rediss://` on every node for TLS);
    /// the rest of the cluster is discovered from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "addresses")]
    pub nodes: Vec<String>,
    /// Mode sentinel: where to ask for the master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelSpec>,
    /// Secret key holding the user (ACL) of every Redis node; overrides one in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the password of every Redis node; overrides one in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Prefix of every key and channel (no braces or spaces: braces would change which
    /// cluster slot keys land in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(r"^[^{} ]+$"))]
    pub key_prefix: Option<String>,
    /// How long Redis may be unreachable before readiness fails, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::DURATION_PATTERN))]
    pub readiness_grace: Option<String>,
    /// TLS of `rediss://` connections: a private CA to trust and a client certificate to
    /// present. Not needed when the servers' certificates chain to a public CA and no
    /// client certificate is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsSpec>,
}

/// The files of `redis.tls`, each from a Secret key (mounted into the pods, never copied).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.clientCertSecretRef) == has(self.clientKeySecretRef)",
     "message": CLIENT_CERT_AND_KEY}
]))]
pub struct RedisTlsSpec {
    /// Secret key holding the PEM certificate(s) of the CA that signed the Redis servers'
    /// (and Sentinels') certificates, trusted instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the PEM client certificate (chain) the gateway presents, for
    /// servers that require one (`tls-auth-clients yes`); with clientKeySecretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the PEM private key of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_secret_ref: Option<SecretKeyRef>,
}

/// Where the gateway asks for the master (mode sentinel).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SentinelSpec {
    /// The master's name in the Sentinels' configuration (`sentinel monitor <name> ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub master_name: Option<String>,
    /// Sentinel addresses, `redis://host:26379` (`rediss://` when the Sentinels and the
    /// Redis servers speak TLS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "sentinel_addresses")]
    pub addresses: Vec<String>,
    /// Secret key holding the user of the Sentinels themselves (their own ACL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the password of the Sentinels themselves (`requirepass` in
    /// sentinel.conf), if they require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

impl RedisSpec {
    /// The mode, `single` when unset (the schema default).
    pub fn mode(&self) -> RedisMode {
        self.mode.unwrap_or_default()
    }
}

/// Every mode, as the gateway spells it. The match fails to compile when the gateway gains
/// a mode, so the schema's enum cannot fall behind.
fn modes() -> Vec<serde_json::Value> {
    let all = [RedisMode::Single, RedisMode::Cluster, RedisMode::Sentinel];
    for m in all {
        match m {
            RedisMode::Single | RedisMode::Cluster | RedisMode::Sentinel => {}
        }
    }
    all.iter()
        .filter_map(|m| serde_json::to_value(m).ok())
        .collect()
}

/// `mode`: the gateway's `RedisMode`, an enum of its lowercase names, default `single`.
fn redis_mode(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": modes(),
        "default": serde_json::to_value(RedisMode::default()).unwrap_or_default(),
    })
}

/// A list of Redis addresses, each checked by [`REDIS_ADDRESS_PATTERN`] with a message.
fn address_list(max: u32) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": max,
        "items": {"type": "string", "maxLength": 512},
        "x-kubernetes-validations": [{
            "rule": format!("self.all(a, a.matches('{REDIS_ADDRESS_PATTERN}'))"),
            "message": BAD_ADDRESS,
        }],
    })
}

fn addresses(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    address_list(100)
}

fn sentinel_addresses(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    address_list(20)
}
