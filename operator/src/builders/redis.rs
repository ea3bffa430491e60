//! `gateway.redis` in the gateway's config and environment. What is not secret (the mode,
//! cluster seeds, the Sentinels and the master's name, key prefix, readiness grace) goes
//! into the ConfigMap; the URL and every credential reach the pod only as environment
//! variables from their Secrets (`secretKeyRef`), under the names the gateway's loader
//! takes verbatim (`chat_gateway_config::VERBATIM_ENV_PATHS`). The TLS CA and
//! client certificate are files: one projected volume holds each referenced Secret key
//! under a fixed name, and the ConfigMap's `redis.tls` names the files.

use super::parse_duration;
use crate::crd::{RedisSpec, SecretKeyRef};
use crate::error::Result;
use chat_gateway_config::{Config, RedisConfig, RedisTlsConfig};
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, KeyToPath, ProjectedVolumeSource, SecretKeySelector, SecretProjection,
    Volume, VolumeMount, VolumeProjection,
};
use std::path::PathBuf;

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

/// Volume of the Redis TLS files.
pub const TLS_VOLUME: &str = "redis-tls";
/// Where the Redis TLS files are mounted: beside the JWT keys under
/// `/var/run/secrets/chatgateway/`, not under the ConfigMap's `/etc/chatgateway` (a mount
/// nested in a read-only volume fails on some runtimes: the mount point cannot be made).
pub const TLS_DIR: &str = "/var/run/secrets/chatgateway/redis-tls";
/// File of the CA certificate(s) (`redis.tls.caFile`).
pub const TLS_CA: &str = "ca.crt";
/// File of the client certificate (`redis.tls.certFile`).
pub const TLS_CERT: &str = "tls.crt";
/// File of the client certificate's private key (`redis.tls.keyFile`).
pub const TLS_KEY: &str = "tls.key";

/// The Secret keys of `gateway.redis.tls` and the file each one becomes under [`TLS_DIR`],
/// in a fixed order: CA, client certificate, client key.
pub fn tls_files(r: &RedisSpec) -> Vec<(&'static str, &SecretKeyRef)> {
    let Some(tls) = &r.tls else { return Vec::new() };
    [
        (TLS_CA, tls.ca_secret_ref.as_ref()),
        (TLS_CERT, tls.client_cert_secret_ref.as_ref()),
        (TLS_KEY, tls.client_key_secret_ref.as_ref()),
    ]
    .into_iter()
    .filter_map(|(file, secret)| secret.map(|s| (file, s)))
    .collect()
}

/// The volume holding the TLS files and its read-only mount in the gateway container;
/// `None` without any. One projected volume, so the CA and the client certificate may come
/// from different Secrets yet sit in one directory. Mode 0440: readable by the pod's
/// fsGroup (`pod::GATEWAY_GROUP`, the non-root gateway's group), by nobody else. A
/// whole-volume mount (no subPath): the kubelet keeps the files current.
pub fn tls_volume(r: &RedisSpec) -> Option<(Volume, VolumeMount)> {
    let files = tls_files(r);
    if files.is_empty() {
        return None;
    }
    let sources = files
        .into_iter()
        .map(|(file, secret)| VolumeProjection {
            secret: Some(SecretProjection {
                name: secret.name.clone(),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: file.into(),
                    mode: Some(0o440),
                }]),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        })
        .collect();
    let volume = Volume {
        name: TLS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(sources),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: TLS_VOLUME.into(),
        mount_path: TLS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

/// `redis.tls` for the spec: the path of each mounted file; `None` when no file is
/// referenced.
pub fn tls_config(r: &RedisSpec) -> Option<RedisTlsConfig> {
    let tls = r.tls.as_ref()?;
    let path = |secret: &Option<SecretKeyRef>, file: &str| {
        secret
            .as_ref()
            .map(|_| PathBuf::from(format!("{TLS_DIR}/{file}")))
    };
    let c = RedisTlsConfig {
        ca_file: path(&tls.ca_secret_ref, TLS_CA),
        cert_file: path(&tls.client_cert_secret_ref, TLS_CERT),
        key_file: path(&tls.client_key_secret_ref, TLS_KEY),
    };
    (!c.is_empty()).then_some(c)
}

/// The gateway's config file: `config` as YAML, with `redis.tls` naming the mounted files
/// when the spec references TLS Secrets.
pub fn config_yaml(config: &Config, r: Option<&RedisSpec>) -> String {
    let Some(tls) = r.and_then(tls_config) else {
        return config.to_yaml();
    };
    let mut config = config.clone();
    config.redis.tls = tls;
    config.to_yaml()
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "redis_tls_tests.rs"]
mod tls_tests;
