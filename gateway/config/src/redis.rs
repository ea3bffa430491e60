//! The `redis` section: which Redis deployment the Redis engine talks to (one server, a
//! Redis Cluster, or a master found through Sentinel), its credentials and TLS, and the
//! checks that turn a wrong combination into one clear error at start.

use crate::redis_tls::RedisTlsConfig;
use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the Redis engine reaches Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis server at `redis.url`.
    #[default]
    Single,
    /// A Redis Cluster (Redis 7 or later: sharded pub/sub), found from `redis.nodes`.
    Cluster,
    /// The master Sentinel names `redis.sentinel.masterName`, asked of
    /// `redis.sentinel.addresses`; followed across failovers.
    Sentinel,
}

/// Redis connection settings (engine `redis`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisConfig {
    /// `single`, `cluster` or `sentinel`.
    pub mode: RedisMode,
    /// Mode `single`: `redis://[user:password@]host:port[/db]` (`rediss://` for TLS);
    /// usually set from a Secret via `CHATGW_REDIS__URL`.
    pub url: String,
    /// Mode `cluster`: seed nodes (`redis://host:port`, or `rediss://` for TLS on every
    /// node); the rest of the cluster is discovered from them. Empty: `url` is the seed.
    pub nodes: Vec<String>,
    /// Mode `sentinel`: where to ask for the master.
    pub sentinel: SentinelConfig,
    /// User for every Redis node (ACL); overrides a user in the URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for every Redis node; overrides one in the URLs. Usually from a Secret via
    /// `CHATGW_REDIS__PASSWORD` (taken verbatim, never read as YAML:
    /// [`VERBATIM_ENV_PATHS`](crate::VERBATIM_ENV_PATHS)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Certificates for `rediss://`: a private CA, a client certificate for mutual TLS.
    #[serde(skip_serializing_if = "RedisTlsConfig::is_empty")]
    pub tls: RedisTlsConfig,
    /// Prefix of every key and channel, so several gateways can share one Redis.
    pub key_prefix: String,
    /// How long Redis may be unreachable before `/readyz` fails.
    #[serde(with = "humantime_serde")]
    pub readiness_grace: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            mode: RedisMode::Single,
            url: "redis://127.0.0.1:6379".into(),
            nodes: Vec::new(),
            sentinel: SentinelConfig::default(),
            username: None,
            password: None,
            tls: RedisTlsConfig::default(),
            key_prefix: "chatgw".into(),
            readiness_grace: Duration::from_secs(5),
        }
    }
}

/// Sentinel settings (mode `sentinel`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SentinelConfig {
    /// The master's name in the Sentinels' configuration (`sentinel monitor <name> …`).
    pub master_name: String,
    /// Sentinel addresses, `redis://host:port` (`rediss://` when the Sentinels and the
    /// Redis servers speak TLS).
    pub addresses: Vec<String>,
    /// User for the Sentinels themselves (their own ACL), if they require one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password of the Sentinels themselves (`requirepass` in sentinel.conf); from a
    /// Secret via `CHATGW_REDIS__SENTINEL__PASSWORD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl RedisConfig {
    /// The cluster's seed URLs: `nodes`, else `url`.
    pub fn seeds(&self) -> Vec<&str> {
        if self.nodes.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.nodes.iter().map(String::as_str).collect()
        }
    }

    /// Checks the section for the mode it names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            return bad(format!(
                "redis.keyPrefix {:?} must be non-empty without braces or spaces (braces would change which cluster slot keys land in)",
                self.key_prefix
            ));
        }
        if self.readiness_grace.is_zero() {
            return bad("redis.readinessGrace must be positive".into());
        }
        self.mode_uses_tls()?;
        self.validate_tls_files()
    }
    /// Checks the URLs of the mode; whether they speak TLS (`rediss://`).
    pub(crate) fn mode_uses_tls(&self) -> Result<bool, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        match self.mode {
            RedisMode::Single => Ok(redis_url("redis.url", &self.url)?.scheme() == "rediss"),
            RedisMode::Cluster => {
                let seeds = self.seeds();
                let mut tls = None;
                for (i, seed) in seeds.iter().enumerate() {
                    let what = if self.nodes.is_empty() {
                        "redis.url".to_string()
                    } else {
                        format!("redis.nodes[{i}]")
                    };
                    let url = redis_url(&what, seed)?;
                    if url
                        .path()
                        .trim_start_matches('/')
                        .parse::<u32>()
                        .unwrap_or(0)
                        != 0
                    {
                        return bad(format!(
                            "{what} {seed:?} names a database: a Redis Cluster has only database 0"
                        ));
                    }
                    let this = url.scheme() == "rediss";
                    if *tls.get_or_insert(this) != this {
                        return bad("redis.nodes mix redis:// and rediss://: use TLS for every node or for none".into());
                    }
                }
                Ok(tls == Some(true))
            }
            RedisMode::Sentinel => {
                let s = &self.sentinel;
                if s.master_name.trim().is_empty() {
                    return bad("redis.mode is sentinel but redis.sentinel.masterName is empty: name the master as the Sentinels know it (`sentinel monitor <name> ...`)".into());
                }
                if s.addresses.is_empty() {
                    return bad("redis.mode is sentinel but redis.sentinel.addresses is empty: list the Sentinels (redis://host:26379)".into());
                }
                let mut tls = None;
                for (i, a) in s.addresses.iter().enumerate() {
                    let url = redis_url(&format!("redis.sentinel.addresses[{i}]"), a)?;
                    let this = url.scheme() == "rediss";
                    if *tls.get_or_insert(this) != this {
                        return bad("redis.sentinel.addresses mix redis:// and rediss://".into());
                    }
                }
                Ok(tls == Some(true))
            }
        }
    }
}

/// Parses a Redis URL: `redis://` or `rediss://` with a host (no `unix:`, no other scheme).
fn redis_url(what: &str, raw: &str) -> Result<url::Url, ConfigError> {
    let bad = |m: &str| ConfigError::Invalid(format!("{what} {:?}: {m}", redact(raw)));
    let url = url::Url::parse(raw).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(bad("use redis://host:port (or rediss://host:port for TLS)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(url)
}

/// A URL for an error message, its password replaced.
fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Config;

    /// Loads a config valid apart from the redis section, with `env` on top.
    pub(crate) fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        // A config valid apart from the redis section.
        let base = [
            ("CHATGW_AUTH__MODE", "insecure"),
            ("CHATGW_SERVER__LISTEN", "127.0.0.1:8080"),
        ];
        Config::load(
            None,
            base.iter()
                .chain(env)
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn modes_load_from_the_environment() {
        let c = load(&[
            ("CHATGW_REDIS__MODE", "cluster"),
            ("CHATGW_REDIS__NODES", "[redis://a:7000, redis://b:7001]"),
        ])
        .expect("cluster");
        assert_eq!(c.redis.mode, RedisMode::Cluster);
        assert_eq!(c.redis.seeds(), vec!["redis://a:7000", "redis://b:7001"]);
        let c = load(&[
            ("CHATGW_REDIS__MODE", "sentinel"),
            ("CHATGW_REDIS__SENTINEL__MASTER_NAME", "chat"),
            (
                "CHATGW_REDIS__SENTINEL__ADDRESSES",
                "[redis://s1:26379, redis://s2:26379]",
            ),
            ("CHATGW_REDIS__PASSWORD", "0123"),
            ("CHATGW_REDIS__SENTINEL__PASSWORD", "true"),
        ])
        .expect("sentinel");
        assert_eq!(c.redis.sentinel.master_name, "chat");
        assert_eq!(c.redis.sentinel.addresses.len(), 2);
        // Secrets stay the strings they are (YAML would make 0123 the number 123).
        assert_eq!(c.redis.password.as_deref(), Some("0123"));
        assert_eq!(c.redis.sentinel.password.as_deref(), Some("true"));
    }

    #[test]
    fn wrong_combinations_are_named() {
        let err = |env: &[(&str, &str)]| load(env).expect_err("invalid").to_string();
        let e = err(&[("CHATGW_REDIS__MODE", "sentinel")]);
        assert!(e.contains("redis.sentinel.masterName"), "{e}");
        let e = err(&[
            ("CHATGW_REDIS__MODE", "sentinel"),
            ("CHATGW_REDIS__SENTINEL__MASTER_NAME", "m"),
        ]);
        assert!(e.contains("redis.sentinel.addresses is empty"), "{e}");
        let e = err(&[
            ("CHATGW_REDIS__MODE", "cluster"),
            ("CHATGW_REDIS__NODES", "[redis://a:1, rediss://b:2]"),
        ]);
        assert!(e.contains("mix"), "{e}");
        let e = err(&[
            ("CHATGW_REDIS__MODE", "cluster"),
            ("CHATGW_REDIS__NODES", "[redis://a:1/3]"),
        ]);
        assert!(e.contains("database"), "{e}");
        let e = err(&[("CHATGW_REDIS__URL", "http://:hunter2@x:1")]);
        assert!(e.contains("redis.url") && !e.contains("hunter2"), "{e}");
        let e = err(&[("CHATGW_REDIS__MODE", "shards")]);
        assert!(e.contains("redis.mode"), "{e}");
        let e = err(&[("CHATGW_REDIS__KEY_PREFIX", "a{b}")]);
        assert!(e.contains("keyPrefix"), "{e}");
    }

    #[test]
    fn tls_urls_are_accepted_and_passwords_not_printed_when_unset() {
        let c = load(&[("CHATGW_REDIS__URL", "rediss://:pw@redis.example:6380/2")])
            .expect("tls single");
        assert!(c.redis.url.starts_with("rediss://"));
        assert!(!Config::default().to_yaml().contains("password"));
    }
}
