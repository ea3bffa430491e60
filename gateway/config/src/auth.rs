//! Authentication settings: how connection tokens (and room subscription tokens) are
//! verified, and what the insecure dev mode may do.

use serde::{Deserialize, Serialize};
use std::{path::PathBuf, time::Duration};

/// Authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Signed JWT required.
    Jwt,
    /// `?user=NAME` is trusted as is. For demos only.
    Insecure,
}

/// JWT signature algorithm of the single configured key (a JWKS file carries its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (at least 32 bytes).
    HS256,
    /// RSA-SHA256 with a PEM public key.
    RS256,
    /// ECDSA P-256 SHA-256 with a PEM public key.
    ES256,
    /// Ed25519 with a PEM public key.
    EdDSA,
}

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// `jwt` (default) or `insecure`.
    pub mode: AuthMode,
    /// JWT verification settings (mode `jwt`).
    pub jwt: JwtConfig,
    /// Accept a token in `?token=` (URLs end up in proxy and access logs; turn it off in
    /// production and use the `Authorization` header or the `bearer.<jwt>` subprotocol).
    pub query_token: bool,
    /// The `expiring` push goes out this long before a token expires, so a client can
    /// `refresh` without reconnecting.
    #[serde(with = "humantime_serde")]
    pub expiry_warning: Duration,
    /// Insecure mode refuses to start on a non-loopback address unless this is set: anyone
    /// who can reach the port can then connect as any user.
    pub dangerously_allow_insecure_on_network: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Jwt,
            jwt: JwtConfig::default(),
            query_token: true,
            expiry_warning: Duration::from_secs(60),
            dangerously_allow_insecure_on_network: false,
        }
    }
}

/// JWT verification settings. Keys: one configured key (`secret`/`secretFile` for HS256,
/// `publicKey`/`publicKeyFile` otherwise), and/or a JWKS file of several keys selected by
/// the token's `kid`, re-read when it changes (key rotation without a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtConfig {
    /// Algorithm of the single configured key; tokens signed otherwise are refused.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (at least 32 bytes).
    pub secret: Option<String>,
    /// File holding the HS256 shared secret (trailing newline ignored).
    pub secret_file: Option<PathBuf>,
    /// Public key (RS256, ES256, EdDSA), PEM.
    pub public_key: Option<String>,
    /// File holding the public key, PEM.
    pub public_key_file: Option<PathBuf>,
    /// A JSON Web Key Set (RFC 7517) file: keys selected by `kid`; `oct` (HS256), `RSA`
    /// (RS256), `EC` P-256 (ES256) and `OKP` Ed25519 (EdDSA) keys.
    pub jwks_file: Option<PathBuf>,
    /// How often the key files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Required `aud` claim. Required unless `requireAudience: false`.
    pub audience: Option<String>,
    /// Refuse to start without `audience` (a token minted for another service must not
    /// open a chat socket). Set false only when the issuer mints tokens for this gateway
    /// alone.
    pub require_audience: bool,
    /// Clock skew tolerated on `exp`/`nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim of the connection token that grants rooms: `{"team:blue": ["join", "send"],
    /// "news:*": ["join"]}`, or a list of names/patterns (join and send).
    pub rooms_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            secret_file: None,
            public_key: None,
            public_key_file: None,
            jwks_file: None,
            reload_interval: Duration::from_secs(10),
            issuer: None,
            audience: None,
            require_audience: true,
            leeway: Duration::from_secs(5),
            rooms_claim: "rooms".into(),
        }
    }
}

impl JwtConfig {
    /// Whether any key is configured.
    pub fn has_key(&self) -> bool {
        let single = match self.algorithm {
            JwtAlgorithm::HS256 => self.secret.is_some() || self.secret_file.is_some(),
            _ => self.public_key.is_some() || self.public_key_file.is_some(),
        };
        single || self.jwks_file.is_some()
    }
}
