//! `gateway.redis` in the gateway's config and environment. What is not secret (the mode,
//! cluster seeds, the Sentinels and the master's name, key prefix, readiness grace) goes
//! into the ConfigMap; the URL and every credential reach the pod only as environment
//! variables from their Secrets (`secretKeyRef`), under the names the gateway's loader
//! takes verbatim (`chat_gateway_config::redis::VERBATIM_ENV_PATHS`).

use super::parse_duration;
use crate::crd::{RedisSpec, SecretKeyRef};
use crate::error::Result;
use chat_gateway_config::RedisConfig;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};

/// The Redis URL's variable (`redis.url`).
pub const REDIS_URL_ENV: &str = "CHATGW_REDIS__URL";

/// The Secret keys of `gateway.redis` and the variable each one sets, in a fixed order:
/// URL, user, password, then the Sentinels' user and password.
pub fn redis_env(r: &RedisSpec) -> Vec<(&'static str, &SecretKeyRef)> {
    let sentinel = r.sentinel.as_ref();
    [
        (REDIS_URL_ENV, r.url_secret_ref.as_ref()),
        ("CHATGW_REDIS__USERNAME", r.username_secret_ref.as_ref()),
        ("CHATGW_REDIS__PASSWORD", r.password_secret_ref.as_ref()),
        (
            "CHATGW_REDIS__SENTINEL__USERNAME",
            sentinel.and_then(|s| s.username_secret_ref.as_ref()),
        ),
        (
            "CHATGW_REDIS__SENTINEL__PASSWORD",
            sentinel.and_then(|s| s.password_secret_ref.as_ref()),
        ),
    ]
    .into_iter()
    .filter_map(|(var, secret)| secret.map(|s| (var, s)))
    .collect()
}

/// The pod's environment for `gateway.redis`: one `secretKeyRef` variable per Secret key.
pub fn env(r: &RedisSpec) -> Vec<EnvVar> {
    redis_env(r)
        .into_iter()
        .map(|(var, secret)| EnvVar {
            name: var.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            value: None,
        })
        .collect()
}

/// Writes the non-secret part of `gateway.redis` into the gateway's `redis` section.
pub fn apply(c: &mut RedisConfig, r: &RedisSpec) -> Result<()> {
    c.mode = r.mode();
    c.nodes = r.nodes.clone();
    if let Some(s) = &r.sentinel {
        c.sentinel.master_name = s.master_name.clone().unwrap_or_default();
        c.sentinel.addresses = s.addresses.clone();
    }
    if let Some(prefix) = &r.key_prefix {
        c.key_prefix = prefix.clone();
    }
    c.readiness_grace = parse_duration(
        "gateway.redis.readinessGrace",
        r.readiness_grace.as_deref(),
        c.readiness_grace,
    )?;
    Ok(())
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;
