//! Gateway configuration: one YAML file, `CHATGW_*` environment overrides, then CLI flags.
//!
//! The operator serialises this same struct into the ConfigMap it writes, so the file a pod
//! reads is exactly what [`Config::from_yaml`] parses: one source of truth.

use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "CHATGW_";

/// Everything the gateway can be told; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Listener and HTTP-level settings.
    pub server: ServerConfig,
    /// Identity of this gateway process in the cluster.
    pub node: NodeConfig,
    /// Which engine holds history, presence and sessions.
    pub engine: EngineKind,
    /// Redis connection (engine `redis`).
    pub redis: RedisConfig,
    /// How clients authenticate at the WebSocket upgrade.
    pub auth: AuthConfig,
    /// Keep-alive settings.
    pub heartbeat: HeartbeatConfig,
    /// Per-connection and per-client limits.
    pub limits: LimitsConfig,
    /// Room history retention and de-duplication.
    pub history: RetentionConfig,
    /// Retention of users' inboxes (direct messages).
    pub inbox: RetentionConfig,
    /// Resume sessions.
    pub sessions: SessionsConfig,
    /// Graceful drain on SIGTERM.
    pub drain: DrainConfig,
    /// Shedding connections from pods well above the cluster mean.
    pub rebalance: RebalanceConfig,
    /// Rate of new connections and resumes admitted (reconnect storms).
    pub admission: AdmissionConfig,
    /// WebSocket forwarding routes to backend services (longest path prefix wins).
    pub routes: Vec<RouteConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            node: NodeConfig::default(),
            engine: EngineKind::Memory,
            redis: RedisConfig::default(),
            auth: AuthConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            limits: LimitsConfig::default(),
            history: RetentionConfig {
                max_messages: 1000,
                max_age: Duration::from_secs(24 * 3600),
            },
            inbox: RetentionConfig {
                max_messages: 1000,
                max_age: Duration::from_secs(7 * 24 * 3600),
            },
            sessions: SessionsConfig::default(),
            drain: DrainConfig::default(),
            rebalance: RebalanceConfig::default(),
            admission: AdmissionConfig::default(),
            routes: Vec::new(),
        }
    }
}

/// Listener and HTTP-level settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Address the single HTTP/WebSocket port listens on.
    pub listen: SocketAddr,
    /// Browser origins allowed to open a socket; empty allows any. `*` matches all.
    pub allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            allowed_origins: Vec::new(),
        }
    }
}

/// Identity of this gateway process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// Node id shown in `welcome`; empty means `$POD_NAME`, `$HOSTNAME` or a random id.
    pub id: String,
}

/// Engine implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Single process, everything in memory (the embedded default).
    Memory,
    /// Any number of processes sharing one Redis.
    Redis,
}

/// Redis connection settings (engine `redis`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; usually set from a Secret via
    /// `CHATGW_REDIS__URL`.
    pub url: String,
    /// Prefix of every key and channel, so several gateways can share one Redis.
    pub key_prefix: String,
    /// How long Redis may be unreachable before `/readyz` fails.
    #[serde(with = "humantime_serde")]
    pub readiness_grace: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "chatgw".into(),
            readiness_grace: Duration::from_secs(5),
        }
    }
}

/// Authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Signed JWT required.
    Jwt,
    /// `?user=NAME` is trusted as is. For demos only.
    Insecure,
}

/// JWT signature algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSA-SHA256 with a PEM public key.
    RS256,
}

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// `jwt` (default) or `insecure`.
    pub mode: AuthMode,
    /// JWT verification settings (mode `jwt`).
    pub jwt: JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Jwt,
            jwt: JwtConfig::default(),
        }
    }
}

/// JWT verification settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtConfig {
    /// The only algorithm accepted; tokens signed otherwise are refused.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// File holding the HS256 shared secret (trailing newline ignored).
    pub secret_file: Option<PathBuf>,
    /// RS256 public key, PEM.
    pub public_key: Option<String>,
    /// File holding the RS256 public key, PEM.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            secret_file: None,
            public_key: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
        }
    }
}

/// Keep-alive settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HeartbeatConfig {
    /// Server WebSocket ping period; a connection silent for two periods is closed.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_secs(25),
        }
    }
}

/// Per-connection and per-client limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    /// Largest accepted WebSocket message; bigger closes with 1009.
    pub max_frame_bytes: usize,
    /// Sustained commands per second per connection (token bucket refill).
    pub message_rate: f64,
    /// Token bucket size: commands allowed in a burst.
    pub message_burst: u32,
    /// Rooms one connection may be joined to (the own inbox not counted).
    pub rooms_per_connection: usize,
    /// Open connections per client IP; 0 disables the limit.
    pub connections_per_ip: u32,
    /// Frames queued for one connection before it is closed as a slow consumer (1013).
    pub outbound_queue_frames: usize,
    /// Bytes queued for one connection before it is closed as a slow consumer (1013).
    pub outbound_queue_bytes: usize,
    /// Consecutive errors (bad frames, refused commands) before closing with 1008.
    pub max_errors_in_row: u32,
    /// Longest room name, in bytes.
    pub max_room_name: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 64 * 1024,
            message_rate: 20.0,
            message_burst: 40,
            rooms_per_connection: 100,
            connections_per_ip: 1000,
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 1024 * 1024,
            max_errors_in_row: 10,
            max_room_name: 128,
        }
    }
}

/// Retention of a message stream (a room's history or a user's inbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RetentionConfig {
    /// Messages kept per stream.
    pub max_messages: usize,
    /// Age after which messages are dropped.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Config::default().history
    }
}

/// Resume sessions and de-duplication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionsConfig {
    /// How long a disconnected session can be resumed.
    #[serde(with = "humantime_serde")]
    pub resume_ttl: Duration,
    /// How long a client `msg_id` is remembered for de-duplication.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            resume_ttl: Duration::from_secs(300),
            dedup_window: Duration::from_secs(300),
        }
    }
}

/// Graceful drain on SIGTERM: readiness off, accept grace, evict at a bounded rate, exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DrainConfig {
    /// Upgrades are still accepted this long after SIGTERM (endpoints take time to update).
    #[serde(with = "humantime_serde")]
    pub accept_grace: Duration,
    /// Connections sent `goaway` and closed (1012) per second.
    pub evict_rate: f64,
    /// If non-zero, spread the evictions over this period instead (rate = open / period,
    /// never below `evictRate`).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Exit at this deadline after SIGTERM even if connections remain (they are closed).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `goaway.reconnect_after_ms` is drawn uniformly from 0 to this.
    #[serde(with = "humantime_serde")]
    pub reconnect_jitter: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            accept_grace: Duration::from_secs(5),
            evict_rate: 100.0,
            period: Duration::ZERO,
            timeout: Duration::from_secs(60),
            reconnect_jitter: Duration::from_secs(2),
        }
    }
}

/// Rebalancing: a pod well above the cluster mean sheds connections slowly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RebalanceConfig {
    /// On by default; `false` turns it off.
    pub enabled: bool,
    /// Shed only when this many connections above the mean ...
    pub abs_threshold: u64,
    /// ... and this fraction above the mean (0.2 = 20 %).
    pub rel_threshold: f64,
    /// Connections shed per second while above the thresholds.
    pub rate: f64,
    /// How often the node compares itself with the cluster.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            enabled: true,
            abs_threshold: 100,
            rel_threshold: 0.2,
            rate: 5.0,
            interval: Duration::from_secs(10),
        }
    }
}

/// Admission of new connections and resumes, cluster-wide with Redis, per pod otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AdmissionConfig {
    /// Upgrades admitted per second; over it, 503 with a jittered Retry-After. 0 = no limit.
    pub rate: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig { rate: 2000 }
    }
}

/// A WebSocket forwarding route: authenticate at the gateway, then pipe frames to an
/// upstream WebSocket service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    /// Short name, used as the metrics label (never the path): `[a-z0-9-]`, unique.
    pub name: String,
    /// Requests whose path starts with this (`/bots` matches `/bots` and `/bots/...`).
    pub path_prefix: String,
    /// `ws://host:port/base`, or a Kubernetes Service as `name:port` (or
    /// `name.namespace:port`), or `localhost:port` for a sidecar.
    pub upstream: String,
    /// Remove `pathPrefix` from the path sent upstream.
    pub strip_prefix: bool,
    /// Extra request headers sent upstream.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Send the authenticated user id as `X-Chat-User`.
    pub forward_user: bool,
    /// Send the W3C `traceparent` upstream.
    pub forward_trace: bool,
    /// Deadline of one dial (TCP connect + WebSocket handshake).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Extra dial attempts after a failure.
    pub retries: u32,
    /// Wait before the first retry; doubles each time.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Open connections through this route at most (503 beyond); 0 = unlimited.
    pub max_connections: u32,
    /// Largest message piped in either direction (close 1009 beyond).
    pub max_frame_bytes: usize,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: String::new(),
            path_prefix: String::new(),
            upstream: String::new(),
            strip_prefix: false,
            headers: Default::default(),
            forward_user: true,
            forward_trace: true,
            connect_timeout: Duration::from_secs(2),
            retries: 2,
            retry_backoff: Duration::from_millis(200),
            max_connections: 10_000,
            max_frame_bytes: 1024 * 1024,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// YAML did not match the schema.
    #[error("invalid config{origin}: {path}{source}")]
    Parse {
        /// Where the YAML came from, for the message.
        origin: String,
        /// Key path of the offending value (`heartbeat.interval: `), if known.
        path: String,
        /// Underlying parse error.
        source: serde_yaml::Error,
    },
    /// An environment override named no known key or had a bad value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// Values parse but do not make sense together.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses YAML text (an empty document gives the defaults).
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                origin: String::new(),
                path: String::new(),
                source,
            })?;
        Self::from_value(value, "")
    }

    fn from_value(value: serde_yaml::Value, origin: &str) -> Result<Config, ConfigError> {
        let value = if value.is_null() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            value
        };
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Parse {
                origin: origin.to_string(),
                path: if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                },
                source: e.into_inner(),
            }
        })
    }

    /// Loads the file (if any), then applies `CHATGW_*` overrides from `env`.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut value, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let value: serde_yaml::Value =
                    serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                        origin: format!(" in {}", path.display()),
                        path: String::new(),
                        source,
                    })?;
                (value, format!(" in {}", path.display()))
            }
            None => (serde_yaml::Value::Null, String::new()),
        };
        let mut overridden = false;
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            apply_env_override(&mut value, &var, rest, &raw)?;
            overridden = true;
        }
        let origin = if overridden {
            format!("{origin} (after {ENV_PREFIX}* overrides)")
        } else {
            origin
        };
        let config = Self::from_value(value, &origin)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks relations between values that serde alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if l.max_frame_bytes < 256 {
            return bad("limits.maxFrameBytes must be at least 256");
        }
        if !(l.message_rate > 0.0 && l.message_rate.is_finite()) {
            return bad("limits.messageRate must be a positive number");
        }
        if l.message_burst == 0 {
            return bad("limits.messageBurst must be at least 1");
        }
        if l.outbound_queue_frames == 0 || l.outbound_queue_bytes < l.max_frame_bytes {
            return bad("limits.outboundQueueFrames must be >= 1 and limits.outboundQueueBytes >= limits.maxFrameBytes");
        }
        if l.max_room_name == 0 || l.max_room_name > 1024 {
            return bad("limits.maxRoomName must be between 1 and 1024");
        }
        if self.heartbeat.interval < Duration::from_millis(50) {
            return bad("heartbeat.interval must be at least 50ms");
        }
        if !(self.drain.evict_rate > 0.0 && self.drain.evict_rate.is_finite()) {
            return bad("drain.evictRate must be a positive number");
        }
        let r = &self.rebalance;
        let rel_ok = r.rel_threshold.is_finite() && r.rel_threshold >= 0.0;
        if !(r.rate > 0.0 && r.rate.is_finite() && rel_ok)
            || r.interval < Duration::from_millis(100)
        {
            return bad("rebalance.rate must be positive, rebalance.relThreshold >= 0, rebalance.interval >= 100ms");
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let what = |m: &str| {
                Err(ConfigError::Invalid(format!(
                    "routes[{i}] ({:?}): {m}",
                    r.name
                )))
            };
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return what("name must be non-empty [a-z0-9-]");
            }
            if !names.insert(r.name.clone()) {
                return what("name is used twice");
            }
            if !r.path_prefix.starts_with('/') || r.path_prefix.len() < 2 {
                return what("pathPrefix must start with / and name a path (not just /)");
            }
            let reserved = ["/ws", "/healthz", "/readyz", "/metrics", "/client.js"];
            if reserved
                .iter()
                .any(|p| r.path_prefix == *p || r.path_prefix.starts_with(&format!("{p}/")))
            {
                return what("pathPrefix collides with the gateway's own endpoints");
            }
            if let Err(e) = crate::forward::upstream_url(&r.upstream) {
                return what(&e);
            }
            if r.max_frame_bytes < 256 {
                return what("maxFrameBytes must be at least 256");
            }
        }
        if self.history.max_messages == 0 || self.inbox.max_messages == 0 {
            return bad("history.maxMessages and inbox.maxMessages must be at least 1");
        }
        if self.auth.mode == AuthMode::Jwt {
            let j = &self.auth.jwt;
            let ok = match j.algorithm {
                JwtAlgorithm::HS256 => j.secret.is_some() || j.secret_file.is_some(),
                JwtAlgorithm::RS256 => j.public_key.is_some() || j.public_key_file.is_some(),
            };
            if !ok {
                return bad("auth.mode is jwt but no key is configured: set auth.jwt.secret or auth.jwt.secretFile (HS256), or auth.jwt.publicKey or auth.jwt.publicKeyFile (RS256); for local development only, auth.mode: insecure");
            }
        }
        Ok(())
    }

    /// The effective config as YAML, every default spelled out.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// `AUTH__JWT__PUBLIC_KEY_FILE` -> `["auth", "jwt", "publicKeyFile"]`.
fn env_path(rest: &str) -> Vec<String> {
    rest.split("__")
        .map(|segment| {
            let mut out = String::new();
            for (i, word) in segment.split('_').filter(|w| !w.is_empty()).enumerate() {
                let lower = word.to_ascii_lowercase();
                if i == 0 {
                    out.push_str(&lower);
                } else {
                    let mut chars = lower.chars();
                    if let Some(first) = chars.next() {
                        out.push(first.to_ascii_uppercase());
                        out.extend(chars);
                    }
                }
            }
            out
        })
        .collect()
}

fn apply_env_override(
    root: &mut serde_yaml::Value,
    var: &str,
    rest: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let path = env_path(rest);
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: var.to_string(),
            message: "expected CHATGW_SECTION__KEY (double underscore between levels)".into(),
        });
    }
    // Parse as a YAML scalar so numbers, booleans and durations keep their type; fall back
    // to a plain string for values YAML would reject (for example a PEM key).
    let value: serde_yaml::Value =
        serde_yaml::from_str(raw).unwrap_or_else(|_| serde_yaml::Value::String(raw.to_string()));
    let mut node = root;
    for (i, key) in path.iter().enumerate() {
        if !node.is_mapping() {
            *node = serde_yaml::Value::Mapping(Default::default());
        }
        let serde_yaml::Value::Mapping(map) = node else {
            unreachable!("made a mapping above")
        };
        let key = serde_yaml::Value::String(key.clone());
        if i + 1 == path.len() {
            map.insert(key, value);
            return Ok(());
        }
        node = map.entry(key).or_insert(serde_yaml::Value::Null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_docs() {
        let c = Config::default();
        assert_eq!(c.limits.max_frame_bytes, 65536);
        assert_eq!(c.limits.message_rate, 20.0);
        assert_eq!(c.limits.message_burst, 40);
        assert_eq!(c.limits.rooms_per_connection, 100);
        assert_eq!(c.limits.outbound_queue_frames, 1024);
        assert_eq!(c.limits.outbound_queue_bytes, 1 << 20);
        assert_eq!(c.heartbeat.interval, Duration::from_secs(25));
        assert_eq!(c.auth.mode, AuthMode::Jwt);
    }

    #[test]
    fn printed_config_round_trips() {
        let mut c = Config::default();
        c.auth.jwt.secret = Some("s".into());
        let back = Config::from_yaml(&c.to_yaml()).expect("parse printed config");
        assert_eq!(back, c);
        assert!(c.to_yaml().contains("interval: 25s"));
    }

    #[test]
    fn env_overrides_nested_camel_case_keys() {
        let c = Config::load(
            None,
            env(&[
                ("CHATGW_AUTH__MODE", "insecure"),
                ("CHATGW_LIMITS__MAX_FRAME_BYTES", "1024"),
                ("CHATGW_HEARTBEAT__INTERVAL", "2s"),
                ("CHATGW_SERVER__ALLOWED_ORIGINS", "[https://a.example]"),
                ("OTHER", "ignored"),
            ]),
        )
        .expect("load");
        assert_eq!(c.auth.mode, AuthMode::Insecure);
        assert_eq!(c.limits.max_frame_bytes, 1024);
        assert_eq!(c.heartbeat.interval, Duration::from_secs(2));
        assert_eq!(
            c.server.allowed_origins,
            vec!["https://a.example".to_string()]
        );
    }

    #[test]
    fn env_override_beats_file() {
        let dir = std::env::temp_dir().join(format!("chatgw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("c.yaml");
        std::fs::write(
            &file,
            "auth:\n  mode: insecure\nlimits:\n  roomsPerConnection: 7\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&file),
            env(&[("CHATGW_LIMITS__ROOMS_PER_CONNECTION", "9")]),
        )
        .expect("load");
        assert_eq!(c.limits.rooms_per_connection, 9);
        assert_eq!(c.auth.mode, AuthMode::Insecure);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::from_yaml("limits:\n  maxFrameByte: 3\n").expect_err("typo");
        assert!(e.to_string().contains("maxFrameByte"), "{e}");
        let e = Config::load(None, env(&[("CHATGW_NOPE__X", "1")])).expect_err("unknown env key");
        assert!(e.to_string().contains("nope"), "{e}");
        let e = Config::load(
            None,
            env(&[
                ("CHATGW_AUTH__MODE", "insecure"),
                ("CHATGW_HEARTBEAT__INTERVAL", "soon"),
            ]),
        )
        .expect_err("bad duration");
        assert!(e.to_string().contains("heartbeat"), "{e}");
    }

    #[test]
    fn jwt_mode_without_key_is_refused() {
        let e = Config::load(None, Vec::new()).expect_err("no key");
        assert!(e.to_string().contains("auth.jwt.secret"), "{e}");
    }
}
