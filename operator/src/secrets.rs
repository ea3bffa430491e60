//! The Secrets a ChatGateway references: checked on every reconcile, partly hashed, and
//! watched so that a rotated key takes effect and a Secret created late is picked up at once.
//!
//! The gateway reads the Redis URL and credentials (Redis and Sentinel user and password)
//! from its environment, and its Redis TLS files (CA, client certificate and key), once, at
//! start, so a new value only reaches it through new pods; a single JWT key (`secretRef`,
//! `publicKeySecretRef`) is a hard cut-over that new pods make at once everywhere. The hash
//! of those keys goes on the pod template: a changed key changes the template and the
//! Deployment rolls the pods through the normal drain. A key set (`jwksSecretRef`) is left
//! out of the hash: the kubelet rewrites the mounted file when the Secret changes and every
//! gateway re-reads it (`auth.jwt.reloadInterval`), so keys rotate with no rollout and no
//! reconnects. The server API's keys (`gateway.api.keysSecretRef`) are left out the same
//! way: the gateway re-reads its keys file (`api.reloadInterval`). The operator never
//! copies a Secret's value anywhere; the hash is one-way.
//!
//! What the operator can see of a value it checks, so a key the gateway would refuse is
//! reported on the ChatGateway instead of as crash-looping pods: an HS256 secret's length,
//! that a key set is a JWKS document whose keys have a `kid` (the gateway still checks
//! the key material itself, at start and at every reload), that the API keys hold at least
//! one key, that the Redis TLS files hold PEM certificates and a PEM private key, and that
//! a URL meant for TLS is not `redis://`.

use crate::builders::auth::key_files;
use crate::crd::{ChatGateway, ChatGatewaySpec, JwtAlgorithmSpec, SecretKeyRef};
use crate::error::{Error, Result};
use chat_gateway_config::MIN_HS256_SECRET;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

/// What a referenced Secret key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The `redis://` URL; `tls` when `gateway.redis.tls` is set and the URL is what the
    /// gateway connects to (mode single, or mode cluster's seed without `nodes`).
    RedisUrl {
        /// Whether the URL must be `rediss://`.
        tls: bool,
    },
    /// A user or password of the Redis nodes or of the Sentinels.
    RedisCredential,
    /// The HS256 shared secret (checked only when the algorithm is HS256).
    Hs256Secret {
        /// Whether HS256 is the configured algorithm.
        in_use: bool,
    },
    /// A PEM public key.
    PublicKey,
    /// A JSON Web Key Set.
    KeySet,
    /// The server API's keys, one per line.
    ApiKeys,
    /// The PEM CA certificate(s) the gateway trusts for `rediss://`.
    RedisCa,
    /// The PEM client certificate the gateway presents to Redis.
    RedisClientCert,
    /// The PEM private key of that client certificate.
    RedisClientKey,
}

impl Purpose {
    /// Whether a change of the value needs new pods (and so goes into the hash): not for
    /// the files the gateway re-reads when they change.
    pub fn rolls_pods(self) -> bool {
        !matches!(self, Purpose::KeySet | Purpose::ApiKeys)
    }
}

/// Every Secret key the spec references and what for, in a fixed order.
pub fn refs(spec: &ChatGatewaySpec) -> Vec<(&SecretKeyRef, Purpose)> {
    let g = spec.gateway.as_ref();
    let jwt = g.and_then(|g| g.auth.as_ref()).and_then(|a| a.jwt.as_ref());
    let hs256 = jwt
        .is_some_and(|j| j.algorithm.unwrap_or(JwtAlgorithmSpec::HS256) == JwtAlgorithmSpec::HS256);
    let redis_spec = g.and_then(|g| g.redis.as_ref());
    // With nodes, the URL is not the cluster's seed (and sentinel mode has no URL).
    let url_tls = redis_spec.is_some_and(|r| r.tls.is_some() && r.nodes.is_empty());
    let redis = redis_spec
        .map(crate::builders::redis_env)
        .unwrap_or_default()
        .into_iter()
        .map(|(var, r)| {
            let purpose = if var == crate::builders::REDIS_URL_ENV {
                Purpose::RedisUrl { tls: url_tls }
            } else {
                Purpose::RedisCredential
            };
            (r, purpose)
        });
    let tls = redis_spec
        .map(crate::builders::redis::tls_files)
        .unwrap_or_default()
        .into_iter()
        .map(|(file, r)| {
            let purpose = match file {
                crate::builders::redis::TLS_CA => Purpose::RedisCa,
                crate::builders::redis::TLS_CERT => Purpose::RedisClientCert,
                _ => Purpose::RedisClientKey,
            };
            (r, purpose)
        });
    let keys = key_files(spec).into_iter().map(|k| {
        let purpose = match k.volume {
            "jwt-secret" => Purpose::Hs256Secret { in_use: hs256 },
            "jwt-jwks" => Purpose::KeySet,
            crate::builders::auth::API_KEYS_VOLUME => Purpose::ApiKeys,
            _ => Purpose::PublicKey,
        };
        (k.secret, purpose)
    });
    redis.chain(tls).chain(keys).collect()
}

/// Reads every referenced key, checks what it can of each value, and returns the hash of
/// the values whose change needs new pods (`None` when there are none). Fails with
/// [`Error::SecretRef`] for a missing Secret or key, [`Error::SecretValue`] for a value the
/// gateway would refuse.
pub async fn hash(client: &Client, ns: &str, spec: &ChatGatewaySpec) -> Result<Option<String>> {
    let refs = refs(spec);
    if refs.is_empty() {
        return Ok(None);
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let (mut hashed, mut values) = (Vec::new(), Vec::new());
    for (r, purpose) in &refs {
        let value = secrets
            .get_opt(&r.name)
            .await?
            .and_then(|s| s.data)
            .and_then(|mut d| d.remove(&r.key));
        let Some(value) = value else {
            return Err(Error::SecretRef {
                namespace: ns.into(),
                name: r.name.clone(),
                key: r.key.clone(),
            });
        };
        check(*purpose, &value.0).map_err(|problem| Error::SecretValue {
            namespace: ns.into(),
            name: r.name.clone(),
            key: r.key.clone(),
            problem,
        })?;
        if purpose.rolls_pods() {
            hashed.push(*r);
            values.push(value.0);
        }
    }
    Ok((!hashed.is_empty()).then(|| digest(&hashed, &values)))
}

/// What the operator can tell about a value without the gateway's key parsers.
pub fn check(purpose: Purpose, value: &[u8]) -> Result<(), String> {
    match purpose {
        Purpose::Hs256Secret { in_use: true } => {
            // The gateway ignores a trailing newline (`echo secret > file`).
            let len = value
                .iter()
                .rposition(|b| !matches!(b, b'\n' | b'\r'))
                .map_or(0, |last| last + 1);
            if len < MIN_HS256_SECRET {
                return Err(format!(
                    "the HS256 secret is {len} bytes; the gateway needs at least {MIN_HS256_SECRET} (it would refuse to start): e.g. `openssl rand -hex 32`"
                ));
            }
        }
        Purpose::KeySet => {
            let doc: serde_json::Value = serde_json::from_slice(value)
                .map_err(|e| format!("not a JSON Web Key Set (JSON): {e}"))?;
            let Some(keys) = doc.get("keys").and_then(|k| k.as_array()) else {
                return Err("not a JSON Web Key Set: no `keys` array".into());
            };
            if keys.is_empty() {
                return Err("the key set has no keys".into());
            }
            if let Some(i) = keys.iter().position(|k| !k["kid"].is_string()) {
                return Err(format!(
                    "keys[{i}] has no `kid`: the gateway picks keys by kid"
                ));
            }
        }
        Purpose::ApiKeys => {
            // The gateway's reading: one key per line, blank lines and `#` comments skipped.
            let text = String::from_utf8_lossy(value);
            let keys = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count();
            if keys == 0 {
                return Err("no API key in it (one per line; blank lines and # comments are skipped): the gateway would refuse to start".into());
            }
        }
        Purpose::RedisUrl { tls: true } => {
            // Only the scheme: the rest of the URL may hold a password.
            if String::from_utf8_lossy(value)
                .trim_start()
                .starts_with("redis://")
            {
                return Err("gateway.redis.tls is set, but the URL is redis:// (no TLS): the gateway would connect in plain text or refuse; use rediss://".into());
            }
        }
        Purpose::RedisCa | Purpose::RedisClientCert => {
            pem_block(
                value,
                |tag| tag == "CERTIFICATE",
                "-----BEGIN CERTIFICATE-----",
            )?;
        }
        Purpose::RedisClientKey => {
            // PKCS#8, PKCS#1 (RSA) or SEC1 (EC), as rustls reads them.
            pem_block(
                value,
                |tag| tag.ends_with("PRIVATE KEY") && !tag.contains("ENCRYPTED"),
                "-----BEGIN PRIVATE KEY----- (unencrypted)",
            )?;
        }
        Purpose::Hs256Secret { in_use: false }
        | Purpose::RedisUrl { tls: false }
        | Purpose::RedisCredential
        | Purpose::PublicKey => {}
    }
    Ok(())
}

/// Whether `value` holds a PEM block whose tag `wanted` accepts; the error names the
/// block expected (never the value). The gateway still parses the DER at start.
fn pem_block(value: &[u8], wanted: impl Fn(&str) -> bool, expected: &str) -> Result<(), String> {
    let blocks = pem::parse_many(value).map_err(|_| format!("not PEM: expected {expected}"))?;
    if blocks.iter().any(|b| wanted(b.tag())) {
        return Ok(());
    }
    let found: Vec<_> = blocks.iter().map(|b| b.tag()).collect();
    Err(format!("no {expected} block in it (found: {found:?})"))
}

/// Hash over each reference and its value; lengths are included so that no two different
/// inputs concatenate to the same bytes.
pub fn digest(refs: &[&SecretKeyRef], values: &[Vec<u8>]) -> String {
    let mut h = Sha256::new();
    for (r, v) in refs.iter().zip(values) {
        for part in [r.name.as_bytes(), r.key.as_bytes(), v.as_slice()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

/// The ChatGateways in `namespace` that reference the Secret `name` (the Secret watch's
/// mapper: a created, changed or deleted Secret reconciles exactly these; a key set's
/// change too, so a key set the gateway would refuse is reported).
pub fn gateways_using<'a>(
    namespace: &str,
    name: &str,
    gateways: impl IntoIterator<Item = &'a ChatGateway>,
) -> Vec<ObjectRef<ChatGateway>> {
    gateways
        .into_iter()
        .filter(|g| g.namespace().as_deref() == Some(namespace))
        .filter(|g| refs(&g.spec).iter().any(|(r, _)| r.name == name))
        .map(ObjectRef::from_obj)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::{cgw, FULL, MINIMAL};

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    /// Each reference as `secret/key purpose rolls-pods`, in the order refs() gives.
    fn described(c: &ChatGateway) -> Vec<String> {
        refs(&c.spec)
            .iter()
            .map(|(r, p)| format!("{}/{} {p:?} {}", r.name, r.key, p.rolls_pods()))
            .collect()
    }

    #[test]
    fn refs_in_order_and_only_the_key_set_stays_out_of_the_hash() {
        let c = cgw(FULL);
        let names = described(&c);
        assert_eq!(
            names,
            [
                "redis/url RedisUrl { tls: false } true",
                "jwt/secret Hs256Secret { in_use: true } true",
                "jwks/jwks.json KeySet false",
            ]
        );
        assert!(refs(&cgw(MINIMAL).spec).is_empty());
        let rs = cgw("gateway: {auth: {jwt: {algorithm: RS256, publicKeySecretRef: {name: k, key: pem}, secretRef: {name: s, key: k}, audience: a}}}");
        let purposes: Vec<_> = refs(&rs.spec).into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            purposes,
            [Purpose::Hs256Secret { in_use: false }, Purpose::PublicKey]
        );
    }

    #[test]
    fn every_redis_credential_is_read_hashed_and_watched() {
        let c = cgw("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {mode: sentinel, usernameSecretRef: {name: acl, key: user}, passwordSecretRef: {name: acl, key: pw}, sentinel: {masterName: m, addresses: ['redis://s:26379'], usernameSecretRef: {name: sen, key: user}, passwordSecretRef: {name: sen, key: pw}}}}");
        let names = described(&c);
        assert_eq!(
            names,
            [
                "acl/user RedisCredential true",
                "acl/pw RedisCredential true",
                "sen/user RedisCredential true",
                "sen/pw RedisCredential true",
            ],
            "the gateway reads them once, at start: a new value needs new pods"
        );
        for secret in ["acl", "sen"] {
            assert_eq!(gateways_using("apps", secret, [&c]).len(), 1, "{secret}");
        }
        // Taken as they are: an empty password is Redis's business.
        assert_eq!(check(Purpose::RedisCredential, b""), Ok(()));
    }

    #[test]
    fn the_api_keys_are_checked_and_watched_but_not_hashed() {
        let c = cgw(crate::builders::testing::BACKEND);
        let refs = refs(&c.spec);
        assert_eq!(refs.len(), 1, "{refs:?}");
        let (r, purpose) = refs[0];
        assert_eq!((r.name.as_str(), r.key.as_str()), ("chat-api", "keys"));
        assert_eq!(purpose, Purpose::ApiKeys);
        assert!(!purpose.rolls_pods(), "the gateway re-reads its keys file");
        let names: Vec<_> = gateways_using("apps", "chat-api", [&c])
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            ["chat"],
            "a new or emptied keys Secret is reported at once"
        );
        // Turned off: neither mounted nor read.
        let off = cgw("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {enabled: false, keysSecretRef: {name: chat-api, key: keys}}}");
        assert!(super::refs(&off.spec).is_empty());

        let keys = |v: &str| check(Purpose::ApiKeys, v.as_bytes());
        assert_eq!(keys("k1\n"), Ok(()));
        assert_eq!(
            keys("# rotated 2026-01-01\n\n  new-key  \nold-key\n"),
            Ok(())
        );
        for empty in ["", "\n\n", "# only a comment\n   \n"] {
            let e = keys(empty).unwrap_err();
            assert!(e.contains("no API key"), "{empty:?}: {e}");
        }
    }

    #[test]
    fn values_the_gateway_would_refuse_are_reported() {
        let hs = Purpose::Hs256Secret { in_use: true };
        let short = check(hs, b"0123456789abcdef0123456789abcde\n").unwrap_err();
        assert!(
            short.contains("31 bytes") && short.contains("at least 32"),
            "{short}"
        );
        assert_eq!(check(hs, b"0123456789abcdef0123456789abcdef\n"), Ok(()));
        assert!(check(hs, b"\n\n").unwrap_err().contains("0 bytes"));
        // A secret the configured algorithm does not use is nobody's business.
        assert_eq!(check(Purpose::Hs256Secret { in_use: false }, b"k"), Ok(()));
        let set = |v: &str| check(Purpose::KeySet, v.as_bytes());
        assert!(set("{").unwrap_err().contains("JSON"));
        assert!(set(r#"{"kid": "a"}"#)
            .unwrap_err()
            .contains("no `keys` array"));
        assert!(set(r#"{"keys": []}"#).unwrap_err().contains("no keys"));
        let e = set(r#"{"keys": [{"kid": "a", "kty": "oct"}, {"kty": "oct"}]}"#).unwrap_err();
        assert!(e.contains("keys[1] has no `kid`"), "{e}");
        assert_eq!(
            set(r#"{"keys": [{"kid": "a", "kty": "oct", "k": "x"}]}"#),
            Ok(())
        );
        assert_eq!(check(Purpose::RedisUrl { tls: false }, b""), Ok(()));
    }

    #[test]
    fn the_hash_changes_with_any_value_and_nothing_else() {
        let (a, b) = (key("redis", "url"), key("jwt", "secret"));
        let refs = [&a, &b];
        let base = digest(&refs, &[b"redis://r".to_vec(), b"k1".to_vec()]);
        assert_eq!(
            base,
            digest(&refs, &[b"redis://r".to_vec(), b"k1".to_vec()])
        );
        assert_ne!(
            base,
            digest(&refs, &[b"redis://r".to_vec(), b"k2".to_vec()])
        );
        assert_ne!(
            base,
            digest(&refs, &[b"redis://s".to_vec(), b"k1".to_vec()])
        );
        // No two splits of the same bytes collide.
        let c = key("redi", "surl");
        assert_ne!(
            digest(&[&a], &[b"x".to_vec()]),
            digest(&[&c], &[b"x".to_vec()])
        );
        assert_eq!(base.len(), 16);
    }

    #[test]
    fn a_secret_maps_to_the_gateways_that_use_it() {
        let full = cgw(FULL); // apps/chat uses redis, jwt and jwks
        let mut other =
            cgw("gateway: {auth: {jwt: {secretRef: {name: jwt, key: k}, audience: a}}}");
        other.metadata.name = Some("other".into());
        let mut elsewhere = cgw(FULL);
        elsewhere.metadata.namespace = Some("team-b".into());
        let all = [full, other, elsewhere, cgw(MINIMAL)];
        let names = |ns: &str, secret: &str| {
            gateways_using(ns, secret, all.iter())
                .into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
                .collect::<Vec<_>>()
        };
        assert_eq!(names("apps", "redis"), ["apps/chat"]);
        assert_eq!(names("apps", "jwt"), ["apps/chat", "apps/other"]);
        // The key set is not hashed, but its Secret is watched: a bad one is reported.
        assert_eq!(names("apps", "jwks"), ["apps/chat"]);
        assert_eq!(names("team-b", "jwt"), ["team-b/chat"]);
        assert!(names("apps", "unrelated").is_empty());
    }
}

#[cfg(test)]
#[path = "secrets_tls_tests.rs"]
mod tls_tests;
