//! Loading: YAML text or a file, then `CHATGW_*` environment overrides; printing back.
//!
//! An override names a key path with `__` between levels and `_` between words:
//! `CHATGW_LIMITS__MAX_FRAME_BYTES` sets `limits.maxFrameBytes`. Unknown keys are errors
//! (a typo must not pass silently), with one exception: Kubernetes injects service-link
//! variables for every Service in the namespace (`<SERVICE>_PORT=tcp://…`,
//! `<SERVICE>_SERVICE_HOST`, …), so a Service named `chatgw-redis` produces
//! `CHATGW_REDIS_PORT`. Those are recognised by their shape, skipped and reported in
//! [`Loaded::ignored_env`] instead of stopping the gateway.

use crate::{Config, ConfigError};
use serde_json::Value;

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "CHATGW_";

/// Config paths whose environment overrides are taken verbatim, never read as YAML: the
/// strings that come from Secrets or name a file or a node, which are strings whatever
/// they look like. Read as YAML, a password `0123` became the number 123, a JWT secret
/// lost everything after ` #` (a comment), its quotes or its padding, and an audience
/// `2024` or a secret shaped `a: b` was a number or a map the loader refused. Each path
/// names a string (or optional string or path) key; the tests check each one loads.
pub const VERBATIM_ENV_PATHS: [&[&str]; 17] = [
    &["node", "id"],
    &["redis", "url"],
    &["redis", "username"],
    &["redis", "password"],
    &["redis", "sentinel", "username"],
    &["redis", "sentinel", "password"],
    &["redis", "tls", "caFile"],
    &["redis", "tls", "certFile"],
    &["redis", "tls", "keyFile"],
    &["auth", "jwt", "secret"],
    &["auth", "jwt", "secretFile"],
    &["auth", "jwt", "publicKey"],
    &["auth", "jwt", "publicKeyFile"],
    &["auth", "jwt", "jwksFile"],
    &["auth", "jwt", "audience"],
    &["auth", "jwt", "issuer"],
    &["api", "keysFile"],
];

/// Command-line flags, applied over the file and the environment (before validation).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`: `server.listen`.
    pub listen: Option<std::net::SocketAddr>,
}

/// A loaded config and what the loader skipped on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// `CHATGW_*` variables skipped because they look like Kubernetes service links.
    pub ignored_env: Vec<String>,
}

impl Config {
    /// Parses YAML text (an empty document gives the defaults).
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        from_value(parse_yaml(text, "")?, "")
    }

    /// Loads the file (if any), then applies `CHATGW_*` overrides from `env`, and validates.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::load_reporting(file, env, &Overrides::default()).map(|l| l.config)
    }

    /// Like [`load`](Config::load) with flags on top; also returns the variables it
    /// skipped (for a log line once logging is up).
    pub fn load_reporting(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Loaded, ConfigError> {
        let (mut value, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let origin = format!(" in {}", path.display());
                (parse_yaml(&text, &origin)?, origin)
            }
            None => (Value::Null, String::new()),
        };
        let mut overridden = false;
        let mut ignored_env = Vec::new();
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if is_service_link(rest, &raw) {
                ignored_env.push(var);
                continue;
            }
            apply_env_override(&mut value, &var, rest, &raw)?;
            overridden = true;
        }
        let origin = if overridden {
            format!("{origin} (after {ENV_PREFIX}* overrides)")
        } else {
            origin
        };
        let mut config = from_value(value, &origin)?;
        if let Some(listen) = flags.listen {
            config.server.listen = listen;
        }
        config.validate()?;
        // With the environment applied the Redis URLs are the real ones (the operator's
        // validation, without its Secrets, cannot make this check).
        config.redis.validate_tls_scheme()?;
        ignored_env.sort();
        Ok(Loaded {
            config,
            ignored_env,
        })
    }

    /// The effective config as YAML, every default spelled out.
    pub fn to_yaml(&self) -> String {
        to_yaml(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// YAML options of every document the gateway reads: YAML 1.2 booleans only (`yes` and
/// `on` stay strings, as in the YAML the operator writes).
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o
}

/// Parses YAML text into a tree the loader can edit (an empty document is `null`).
fn parse_yaml(text: &str, origin: &str) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        path: String::new(),
        message: e.to_string(),
    })
}

/// Serialises anything as YAML (the printed config, the ConfigMap the operator writes).
pub fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(|e| e.to_string())
}

fn from_value(value: Value, origin: &str) -> Result<Config, ConfigError> {
    let mut value = if value.is_null() {
        Value::Object(Default::default())
    } else {
        value
    };
    // What a retention leaves out depends on where it is (docs/configuration.md).
    crate::retention::fill_left_out(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Parse {
            origin: origin.to_string(),
            path: if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// Whether `CHATGW_<rest>=<value>` has the shape of a variable Kubernetes injects for a
/// Service (docker-links compatible): `S_SERVICE_HOST`, `S_SERVICE_PORT[_NAME]`,
/// `S_PORT=proto://ip:port`, `S_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]`. Overrides of
/// nested keys always contain `__`, and no top-level key is named like these, so a real
/// override never matches.
fn is_service_link(rest: &str, value: &str) -> bool {
    if rest.contains("__") {
        return false;
    }
    let name = format!("_{rest}"); // the Service part may be empty (a Service named `chatgw`)
    if name.ends_with("_SERVICE_HOST") || name.ends_with("_SERVICE_PORT") {
        return true;
    }
    if let Some(i) = name.rfind("_SERVICE_PORT_") {
        return name[i + "_SERVICE_PORT_".len()..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    }
    let is_url = ["tcp://", "udp://", "sctp://"]
        .iter()
        .any(|p| value.starts_with(p));
    if name.ends_with("_PORT") && is_url {
        return true;
    }
    // `…_PORT_6379_TCP`, then optionally `_PROTO`, `_PORT` or `_ADDR`.
    let parts: Vec<&str> = name.rsplit('_').collect();
    let proto = |s: &str| matches!(s, "TCP" | "UDP" | "SCTP");
    let port = |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [p, n, "PORT", ..] if proto(p) && port(n) => is_url,
        [field, p, n, "PORT", ..] if proto(p) && port(n) => {
            matches!(*field, "PROTO" | "PORT" | "ADDR")
        }
        _ => false,
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
    root: &mut Value,
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
    // A one-line value is read as YAML so numbers, booleans, durations and flow lists keep
    // their type; anything YAML rejects, every multi-line value (a PEM key: YAML would
    // fold its lines) and the secrets, ids and paths of VERBATIM_ENV_PATHS stay the plain
    // string.
    let verbatim = VERBATIM_ENV_PATHS
        .iter()
        .any(|p| p.iter().copied().eq(path.iter().map(String::as_str)));
    let value = if raw.contains('\n') || verbatim {
        Value::String(raw.to_string())
    } else {
        serde_saphyr::from_str_with_options(raw, yaml_options())
            .unwrap_or_else(|_| Value::String(raw.to_string()))
    };
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut node = root;
    for key in parents {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let Value::Object(map) = node else {
            return Ok(()); // made an object just above
        };
        node = map.entry(key.clone()).or_insert(Value::Null);
    }
    if !node.is_object() {
        *node = Value::Object(Default::default());
    }
    if let Value::Object(map) = node {
        map.insert(last.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuthMode;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
                ("CHATGW_SERVER__LISTEN", "127.0.0.1:8080"),
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
            "auth:\n  mode: insecure\nserver:\n  listen: 127.0.0.1:8080\nlimits:\n  roomsPerConnection: 7\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&file),
            env(&[("CHATGW_LIMITS__ROOMS_PER_CONNECTION", "9")]),
        )
        .expect("load");
        let _ = std::fs::remove_dir_all(&dir);
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
        // A top-level typo is still an error, even one ending in _PORT.
        let e = Config::load(
            None,
            env(&[
                ("CHATGW_AUTH__MODE", "insecure"),
                ("CHATGW_REDIS_PORT", "6379"),
            ]),
        )
        .expect_err("not a service link: no proto:// value");
        assert!(e.to_string().contains("redisPort"), "{e}");
    }

    /// Each verbatim path names a string key, and a value YAML would change (a comment, a
    /// number, a map, quotes, padding) reaches it byte for byte.
    #[test]
    fn every_verbatim_path_is_a_string_key_taken_as_is() {
        let raw = " '0123' #x: y ";
        for path in VERBATIM_ENV_PATHS {
            let rest: Vec<String> = path
                .iter()
                .map(|level| {
                    let mut snake = String::new();
                    for c in level.chars() {
                        if c.is_ascii_uppercase() {
                            snake.push('_');
                        }
                        snake.push(c.to_ascii_uppercase());
                    }
                    snake
                })
                .collect();
            let rest = rest.join("__");
            let mut tree = Value::Null;
            apply_env_override(&mut tree, &format!("{ENV_PREFIX}{rest}"), &rest, raw)
                .expect("override");
            let config = from_value(tree, "").unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let printed = serde_json::to_value(&config).expect("serialises");
            let at = path.iter().try_fold(&printed, |node, key| node.get(key));
            assert_eq!(at, Some(&Value::String(raw.into())), "{path:?}");
        }
    }

    #[test]
    fn kubernetes_service_links_are_skipped_and_reported() {
        // What Kubernetes injects for a Service `chatgw-redis` (port 6379, named `redis`)
        // and for a Service named `chatgw` (port 80).
        let links = [
            ("CHATGW_REDIS_SERVICE_HOST", "10.0.0.1"),
            ("CHATGW_REDIS_SERVICE_PORT", "6379"),
            ("CHATGW_REDIS_SERVICE_PORT_REDIS", "6379"),
            ("CHATGW_REDIS_PORT", "tcp://10.0.0.1:6379"),
            ("CHATGW_REDIS_PORT_6379_TCP", "tcp://10.0.0.1:6379"),
            ("CHATGW_REDIS_PORT_6379_TCP_PROTO", "tcp"),
            ("CHATGW_REDIS_PORT_6379_TCP_PORT", "6379"),
            ("CHATGW_REDIS_PORT_6379_TCP_ADDR", "10.0.0.1"),
            ("CHATGW_SERVICE_HOST", "10.0.0.2"),
            ("CHATGW_PORT", "tcp://10.0.0.2:80"),
            ("CHATGW_PORT_80_TCP_ADDR", "10.0.0.2"),
        ];
        let mut vars = env(&links);
        vars.push(("CHATGW_AUTH__MODE".into(), "insecure".into()));
        vars.push(("CHATGW_SERVER__LISTEN".into(), "127.0.0.1:8080".into()));
        vars.push(("CHATGW_ENGINE".into(), "redis".into()));
        let loaded = Config::load_reporting(None, vars, &Overrides::default())
            .expect("service links do not stop the gateway");
        assert_eq!(loaded.config.engine, crate::EngineKind::Redis);
        let mut expected: Vec<String> = links.iter().map(|(k, _)| k.to_string()).collect();
        expected.sort();
        assert_eq!(loaded.ignored_env, expected);
    }
}
