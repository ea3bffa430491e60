//! Gateway configuration: one YAML file, `CHATGW_*` environment overrides, then CLI flags.
//!
//! The operator serialises this same struct into the ConfigMap it writes, so the file a pod
//! reads is exactly what [`Config::from_yaml`] parses: one source of truth. It lives in its
//! own small crate so the operator shares it without linking the gateway's network stack.
//!
//! - [`types`]: every key and its default ([`auth`], [`namespaces`], [`redis`] and
//!   [`retention`] apart);
//! - [`load`]: YAML text or file, environment overrides, printing;
//! - [`validate`]: relations between values that serde alone cannot check.

pub mod auth;
pub mod backend;
pub mod load;
pub mod namespaces;
pub mod redis;
pub mod redis_tls;
pub mod retention;
pub mod types;
pub mod validate;

pub use auth::*;
pub use backend::{ApiConfig, EventsConfig, FailurePolicy, HookConfig, HooksConfig};
pub use load::{to_yaml, Loaded, Overrides, ENV_PREFIX, VERBATIM_ENV_PATHS};
pub use namespaces::{DmPolicy, JoinPolicy, NamespaceConfig, Namespaces, SendPolicy};
pub use redis::{RedisConfig, RedisMode, SentinelConfig};
pub use redis_tls::RedisTlsConfig;
pub use types::*;
pub use validate::{upstream_url, MIN_HS256_SECRET};

use std::path::PathBuf;

/// Paths the gateway serves itself on its one port (besides the demo page at `/`).
/// Forwarding routes may not use them (config validation), the server answers them before
/// any route, and the operator's CRD refuses them in a CEL rule (a test there checks the
/// rule names exactly these).
pub const RESERVED_PATHS: [&str; 5] = ["/ws", "/healthz", "/readyz", "/metrics", "/client.js"];

/// Whether a forwarding route's path prefix is, or lies under, one of [`RESERVED_PATHS`].
pub fn is_reserved_prefix(prefix: &str) -> bool {
    RESERVED_PATHS.iter().any(|p| {
        prefix
            .strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
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
    #[error("invalid config{origin}: {path}{message}")]
    Parse {
        /// Where the YAML came from, for the message.
        origin: String,
        /// Key path of the offending value (`heartbeat.interval: `), if known.
        path: String,
        /// What the parser said.
        message: String,
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
