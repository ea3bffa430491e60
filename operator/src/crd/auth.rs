//! `gateway.auth`: how clients authenticate, with keys from Secrets mounted as files.
//! Field names follow the gateway's `auth` config (docs/configuration.md); the Secret
//! references replace its `*File` paths.

use super::{SecretKeyRef, DURATION_PATTERN};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Authentication settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.mode) && self.mode == 'insecure') || has(self.jwt)",
     "message": "auth.jwt is required unless auth.mode is insecure"},
    {"rule": "!has(self.mode) || self.mode != 'insecure' || (has(self.dangerouslyAllowInsecureOnNetwork) && self.dangerouslyAllowInsecureOnNetwork)",
     "message": "auth.mode insecure lets anyone who reaches a pod connect as any user (?user=NAME), and the pods listen on the network: use auth.mode jwt, or set auth.dangerouslyAllowInsecureOnNetwork: true for a demo nobody else can reach"}
]))]
pub struct AuthSpec {
    /// `jwt` or `insecure` (demo only: `?user=NAME` is trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "jwt"))]
    pub mode: Option<AuthModeSpec>,
    /// JWT verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
    /// The opt-in `mode: insecure` needs: anyone who can reach a pod can then connect as
    /// any user. For a demo nobody else can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub dangerously_allow_insecure_on_network: Option<bool>,
    /// Accept a token in `?token=` (URLs end up in proxy and access logs); false leaves the
    /// `Authorization` header and the `bearer.<jwt>` subprotocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub query_token: Option<bool>,
    /// The `expiring` push goes out this long before a token expires, e.g. `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "60s"))]
    pub expiry_warning: Option<String>,
}

/// Authentication mode.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthModeSpec {
    /// Signed JWT required.
    Jwt,
    /// Trust `?user=NAME`; for demos only.
    Insecure,
}

/// Algorithm of the single configured key (a key set names its keys' own).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JwtAlgorithmSpec {
    /// HMAC-SHA256 with a shared secret of at least 32 bytes.
    HS256,
    /// RSA-SHA256 with a PEM public key.
    RS256,
    /// ECDSA P-256 SHA-256 with a PEM public key.
    ES256,
    /// Ed25519 with a PEM public key.
    EdDSA,
}

/// JWT verification settings; keys come from Secrets mounted as files.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.algorithm) || self.algorithm == 'HS256' || has(self.publicKeySecretRef) || has(self.jwksSecretRef)",
     "message": "RS256, ES256 and EdDSA need publicKeySecretRef (or a key set: jwksSecretRef)"},
    {"rule": "(has(self.algorithm) && self.algorithm != 'HS256') || has(self.secretRef) || has(self.jwksSecretRef)",
     "message": "HS256 needs secretRef (or a key set: jwksSecretRef)"},
    {"rule": "has(self.audience) || (has(self.requireAudience) && !self.requireAudience)",
     "message": "auth.jwt.audience is required (the aud claim your tokens are minted for), unless requireAudience: false"}
]))]
pub struct JwtSpec {
    /// Algorithm of the single key (`secretRef` or `publicKeySecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "HS256"))]
    pub algorithm: Option<JwtAlgorithmSpec>,
    /// Secret key holding the HS256 shared secret (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the RS256, ES256 or EdDSA PEM public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding a JSON Web Key Set: keys picked by the token's `kid`, re-read by
    /// the gateway when the Secret changes, so keys rotate without a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<SecretKeyRef>,
    /// How often the gateway checks the key files for changes, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "10s"))]
    pub reload_interval: Option<String>,
    /// Required `iss` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim: required unless `requireAudience: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub audience: Option<String>,
    /// Refuse a config without `audience`; false only when the issuer mints tokens for
    /// this gateway alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub require_audience: Option<bool>,
    /// Clock skew tolerated, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "5s"))]
    pub leeway: Option<String>,
    /// Claim of the connection token that grants rooms (docs/protocol.md "Permissions").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), extend("default" = "rooms"))]
    pub rooms_claim: Option<String>,
}
