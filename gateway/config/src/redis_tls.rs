//! The `redis.tls` section: CA and client certificate files for `rediss://`, and the
//! checks that keep them from silently doing nothing.

use crate::redis::{RedisConfig, RedisMode};
use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// TLS material for the Redis connections of every mode (`redis.tls`), used only with
/// `rediss://`. The files are PEM, read once when the engine starts (a Secret mounted as
/// files: the operator writes these paths); rotated files take effect on the next start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisTlsConfig {
    /// CA certificates (a PEM bundle) trusted for the Redis servers (and Sentinels)
    /// instead of the system roots: a private or in-cluster CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM, chain allowed) for servers that require mutual TLS; with
    /// `keyFile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1); with `certFile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl RedisTlsConfig {
    /// Whether no file is set (the section is then left out of the printed config).
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// The keys set, as written in the config (for error messages).
    pub(crate) fn set_keys(&self) -> Vec<&'static str> {
        [
            ("redis.tls.caFile", self.ca_file.is_some()),
            ("redis.tls.certFile", self.cert_file.is_some()),
            ("redis.tls.keyFile", self.key_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

impl RedisConfig {
    /// Checks that `redis.tls` has something to do: the mode's URLs are `rediss://`
    /// (else the files would silently do nothing). Not part of [`validate`](Self::validate):
    /// it needs the real URLs, and the operator validates a config whose URL is still in a
    /// Secret. The gateway runs it once the environment (those Secrets) is applied.
    pub fn validate_tls_scheme(&self) -> Result<(), ConfigError> {
        let keys = self.tls.set_keys();
        if keys.is_empty() || self.mode_uses_tls()? {
            return Ok(());
        }
        let (urls, mode) = match self.mode {
            RedisMode::Single => ("redis.url", "single"),
            RedisMode::Cluster if self.nodes.is_empty() => ("redis.url", "cluster"),
            RedisMode::Cluster => ("redis.nodes", "cluster"),
            RedisMode::Sentinel => ("redis.sentinel.addresses", "sentinel"),
        };
        Err(ConfigError::Invalid(format!(
            "{} set but {urls} (mode {mode}) is redis://, not rediss://: the certificates would do nothing; use rediss:// for TLS, or remove redis.tls",
            keys.join(", "),
        )))
    }

    /// Checks `redis.tls` on its own: a client certificate needs its key. (The files
    /// themselves are read when the engine starts: the operator validates this config
    /// where they are not mounted.)
    pub(crate) fn validate_tls_files(&self) -> Result<(), ConfigError> {
        let t = &self.tls;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if t.cert_file.is_some() != t.key_file.is_some() {
            let (set, unset) = if t.cert_file.is_some() {
                ("certFile", "keyFile")
            } else {
                ("keyFile", "certFile")
            };
            return bad(format!(
                "redis.tls.{set} is set but redis.tls.{unset} is not: a client certificate for mutual TLS needs both (or neither)"
            ));
        }
        for (key, path) in [
            ("caFile", &t.ca_file),
            ("certFile", &t.cert_file),
            ("keyFile", &t.key_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return bad(format!(
                    "redis.tls.{key} is empty: name a PEM file, or leave it out"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::redis::tests::load;
    use crate::Config;

    #[test]
    fn tls_files_load_from_the_environment_and_the_file() {
        let c = load(&[
            ("CHATGW_REDIS__URL", "rediss://redis.example:6380"),
            (
                "CHATGW_REDIS__TLS__CA_FILE",
                "/etc/chatgateway/redis-tls/ca.crt",
            ),
            (
                "CHATGW_REDIS__TLS__CERT_FILE",
                "/etc/chatgateway/redis-tls/tls.crt",
            ),
            (
                "CHATGW_REDIS__TLS__KEY_FILE",
                "/etc/chatgateway/redis-tls/tls.key",
            ),
        ])
        .expect("tls from env");
        let t = &c.redis.tls;
        assert_eq!(
            t.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/chatgateway/redis-tls/ca.crt"))
        );
        assert_eq!(
            t.cert_file.as_deref(),
            Some(std::path::Path::new("/etc/chatgateway/redis-tls/tls.crt"))
        );
        assert_eq!(
            t.key_file.as_deref(),
            Some(std::path::Path::new("/etc/chatgateway/redis-tls/tls.key"))
        );
        // The names the operator writes into the config file, and the printed config
        // reads back the same.
        let yaml = "auth: {mode: insecure}\nserver: {listen: 127.0.0.1:8080}\nredis:\n  url: rediss://r:6380\n  tls:\n    caFile: /etc/chatgateway/redis-tls/ca.crt\n    certFile: /etc/chatgateway/redis-tls/tls.crt\n    keyFile: /etc/chatgateway/redis-tls/tls.key\n";
        let from_file = Config::from_yaml(yaml).expect("tls from yaml");
        assert_eq!(from_file.redis.tls, c.redis.tls);
        let printed = from_file.to_yaml();
        assert!(
            printed.contains("caFile: /etc/chatgateway/redis-tls/ca.crt"),
            "{printed}"
        );
        assert_eq!(Config::from_yaml(&printed).expect("round trip"), from_file);
        // A path YAML would read as something else stays a path.
        let c = load(&[
            ("CHATGW_REDIS__URL", "rediss://r:6380"),
            ("CHATGW_REDIS__TLS__CA_FILE", "true"),
        ])
        .expect("verbatim path");
        assert_eq!(
            c.redis.tls.ca_file.as_deref(),
            Some(std::path::Path::new("true"))
        );
        // Unset: not printed at all.
        assert!(!Config::default().to_yaml().contains("tls"));
    }

    #[test]
    fn tls_files_need_tls_and_a_certificate_needs_its_key() {
        let err = |env: &[(&str, &str)]| load(env).expect_err("invalid").to_string();
        let tls = ("CHATGW_REDIS__URL", "rediss://r:6380");
        let e = err(&[tls, ("CHATGW_REDIS__TLS__CERT_FILE", "/c/tls.crt")]);
        assert!(
            e.contains("redis.tls.certFile is set but redis.tls.keyFile is not"),
            "{e}"
        );
        let e = err(&[tls, ("CHATGW_REDIS__TLS__KEY_FILE", "/c/tls.key")]);
        assert!(
            e.contains("redis.tls.keyFile is set but redis.tls.certFile is not"),
            "{e}"
        );
        let e = err(&[tls, ("CHATGW_REDIS__TLS__CA_FILE", "")]);
        assert!(e.contains("redis.tls.caFile is empty"), "{e}");
        // Files without rediss://, in every mode: they would silently do nothing.
        let ca = ("CHATGW_REDIS__TLS__CA_FILE", "/c/ca.crt");
        let e = err(&[ca]);
        assert!(
            e.contains("redis.tls.caFile set but redis.url (mode single) is redis://"),
            "{e}"
        );
        let e = err(&[
            ("CHATGW_REDIS__MODE", "cluster"),
            ("CHATGW_REDIS__NODES", "[redis://a:1, redis://b:2]"),
            ("CHATGW_REDIS__TLS__CERT_FILE", "/c/tls.crt"),
            ("CHATGW_REDIS__TLS__KEY_FILE", "/c/tls.key"),
        ]);
        assert!(
            e.contains("redis.tls.certFile, redis.tls.keyFile set but redis.nodes (mode cluster)"),
            "{e}"
        );
        let e = err(&[("CHATGW_REDIS__MODE", "cluster"), ca]);
        assert!(e.contains("redis.url (mode cluster)"), "{e}");
        let sentinel = [
            ("CHATGW_REDIS__MODE", "sentinel"),
            ("CHATGW_REDIS__SENTINEL__MASTER_NAME", "chat"),
        ];
        let plain = ("CHATGW_REDIS__SENTINEL__ADDRESSES", "[redis://s:26379]");
        let e = err(&[sentinel[0], sentinel[1], plain, ca]);
        assert!(
            e.contains("redis.sentinel.addresses (mode sentinel)"),
            "{e}"
        );
        // The same with rediss:// is fine in every mode (the crate takes the certificates
        // for single servers, cluster nodes, and Sentinels with their master).
        let secure = ("CHATGW_REDIS__SENTINEL__ADDRESSES", "[rediss://s:26379]");
        load(&[sentinel[0], sentinel[1], secure, ca]).expect("sentinel over tls");
        load(&[
            ("CHATGW_REDIS__MODE", "cluster"),
            ("CHATGW_REDIS__NODES", "[rediss://a:1, rediss://b:2]"),
            ca,
        ])
        .expect("cluster over tls");
        load(&[tls, ca]).expect("single over tls");
    }

    #[test]
    fn tls_files_are_valid_without_the_url_the_operator_does_not_know() {
        // The operator validates the config it writes (the caFile it mounts) while the URL
        // is still in a Secret: that must pass, and the gateway, with the URL, decides.
        let yaml = "auth: {mode: insecure}\nserver: {listen: 127.0.0.1:8080}\nredis:\n  tls: {caFile: /etc/chatgateway/redis-tls/ca.crt}\n";
        let c = Config::from_yaml(yaml).expect("parsed");
        c.validate().expect("valid for the operator");
        let e = c.redis.validate_tls_scheme().expect_err("redis:// default");
        assert!(e.to_string().contains("redis.url (mode single)"), "{e}");
        let mut secure = c.redis.clone();
        secure.url = "rediss://r:6380".into();
        secure.validate_tls_scheme().expect("rediss://");
    }
}
