//! `gateway.auth` as the gateway's `auth` config, and every Secret key the gateway reads as
//! a file (its JWT keys and the server API's keys).
//!
//! Keys never go into the ConfigMap: each referenced Secret key is mounted as a file under
//! `/var/run/secrets/chatgateway/` (outside the ConfigMap mount: nested mounts into a
//! read-only volume fail on some runtimes) and the config names the file.

use super::{backend, parse_duration};
use crate::crd::{AuthModeSpec, AuthSpec, ChatGatewaySpec, JwtAlgorithmSpec, SecretKeyRef};
use crate::error::Result;
use chat_gateway_config::{AuthConfig, AuthMode, JwtAlgorithm};
use std::path::PathBuf;

/// File the HS256 secret is mounted as.
pub const JWT_SECRET_FILE: &str = "/var/run/secrets/chatgateway/jwt/secret";
/// File the RS256/ES256/EdDSA public key is mounted as.
pub const JWT_PUBLIC_KEY_FILE: &str = "/var/run/secrets/chatgateway/jwt-public-key/public.pem";
/// File the JSON Web Key Set is mounted as. The kubelet rewrites it in place when the
/// Secret changes and the gateway re-reads it: keys rotate without new pods.
pub const JWT_JWKS_FILE: &str = "/var/run/secrets/chatgateway/jwks/jwks.json";
/// Volume of the API keys (`gateway.api.keysSecretRef`, mounted at `backend::API_KEYS_FILE`).
pub const API_KEYS_VOLUME: &str = "api-keys";

/// A Secret key the gateway reads as a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFile<'a> {
    /// Name of the pod volume.
    pub volume: &'static str,
    /// Where the key comes from.
    pub secret: &'a SecretKeyRef,
    /// The file in the gateway container.
    pub path: &'static str,
}

/// Every key file the spec asks for, in a fixed order: the JWT keys, then the API keys of
/// `gateway.api` when it is on.
pub fn key_files(spec: &ChatGatewaySpec) -> Vec<KeyFile<'_>> {
    let jwt = spec
        .gateway
        .as_ref()
        .and_then(|g| g.auth.as_ref())
        .and_then(|a| a.jwt.as_ref());
    let jwt_keys = jwt.into_iter().flat_map(|jwt| {
        [
            ("jwt-secret", &jwt.secret_ref, JWT_SECRET_FILE),
            (
                "jwt-public-key",
                &jwt.public_key_secret_ref,
                JWT_PUBLIC_KEY_FILE,
            ),
            ("jwt-jwks", &jwt.jwks_secret_ref, JWT_JWKS_FILE),
        ]
    });
    let api_keys =
        backend::api(spec).map(|a| (API_KEYS_VOLUME, &a.keys_secret_ref, backend::API_KEYS_FILE));
    jwt_keys
        .chain(api_keys)
        .filter_map(|(volume, secret, path)| {
            Some(KeyFile {
                volume,
                secret: secret.as_ref()?,
                path,
            })
        })
        .collect()
}

/// Applies `spec.gateway.auth` to the config.
pub fn apply(config: &mut AuthConfig, auth: &AuthSpec) -> Result<()> {
    config.mode = match auth.mode {
        Some(AuthModeSpec::Insecure) => AuthMode::Insecure,
        Some(AuthModeSpec::Jwt) | None => AuthMode::Jwt,
    };
    if let Some(allow) = auth.dangerously_allow_insecure_on_network {
        config.dangerously_allow_insecure_on_network = allow;
    }
    if let Some(query) = auth.query_token {
        config.query_token = query;
    }
    config.expiry_warning = parse_duration(
        "gateway.auth.expiryWarning",
        auth.expiry_warning.as_deref(),
        config.expiry_warning,
    )?;
    let Some(jwt) = &auth.jwt else { return Ok(()) };
    let j = &mut config.jwt;
    j.algorithm = match jwt.algorithm {
        Some(JwtAlgorithmSpec::RS256) => JwtAlgorithm::RS256,
        Some(JwtAlgorithmSpec::ES256) => JwtAlgorithm::ES256,
        Some(JwtAlgorithmSpec::EdDSA) => JwtAlgorithm::EdDSA,
        Some(JwtAlgorithmSpec::HS256) | None => JwtAlgorithm::HS256,
    };
    let file = |r: &Option<SecretKeyRef>, path: &str| r.as_ref().map(|_| PathBuf::from(path));
    j.secret_file = file(&jwt.secret_ref, JWT_SECRET_FILE);
    j.public_key_file = file(&jwt.public_key_secret_ref, JWT_PUBLIC_KEY_FILE);
    j.jwks_file = file(&jwt.jwks_secret_ref, JWT_JWKS_FILE);
    j.reload_interval = parse_duration(
        "gateway.auth.jwt.reloadInterval",
        jwt.reload_interval.as_deref(),
        j.reload_interval,
    )?;
    j.issuer = jwt.issuer.clone();
    j.audience = jwt.audience.clone();
    if let Some(require) = jwt.require_audience {
        j.require_audience = require;
    }
    j.leeway = parse_duration("gateway.auth.jwt.leeway", jwt.leeway.as_deref(), j.leeway)?;
    if let Some(claim) = &jwt.rooms_claim {
        j.rooms_claim = claim.clone();
    }
    Ok(())
}
