//! JWT helpers for tests and the load generator. Every token names [`AUDIENCE`]: gateways
//! under test are configured with it (`auth.jwt.audience`), as production ones must be.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The audience test tokens are minted for.
pub const AUDIENCE: &str = "chatgateway";

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Claims of a connection token for `sub` expiring `ttl_secs` from now, plus `extra`.
pub fn claims(sub: &str, ttl_secs: i64, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "exp": now() + ttl_secs, "aud": AUDIENCE});
    if let (Value::Object(c), Value::Object(extra)) = (&mut c, extra) {
        c.extend(extra);
    }
    c
}

/// Signs `claims` with an HS256 secret, with an optional `kid` header.
pub fn hs256_with(secret: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(Into::into);
    encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode hs256")
}

/// An HS256 token for `sub` expiring `ttl_secs` from now (negative: already expired).
pub fn hs256(secret: &str, sub: &str, ttl_secs: i64) -> String {
    hs256_with(secret, None, &claims(sub, ttl_secs, json!({})))
}

/// An HS256 token for `sub` naming `audience` (gateways configured with another one, e.g.
/// the examples' `chat-demo`).
pub fn hs256_for(secret: &str, audience: &str, sub: &str, ttl_secs: i64) -> String {
    let claims = claims(sub, ttl_secs, json!({ "aud": audience }));
    hs256_with(secret, None, &claims)
}

/// Signs `claims` with a PEM private key of `alg` (RS256, ES256, EdDSA).
pub fn sign_pem(alg: Algorithm, private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
    }
    .expect("private key");
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    encode(&header, claims, &key).expect("encode")
}

/// An RS256 token signed with a PEM private key.
pub fn rs256(private_pem: &str, sub: &str, ttl_secs: i64) -> String {
    sign_pem(
        Algorithm::RS256,
        private_pem,
        None,
        &claims(sub, ttl_secs, json!({})),
    )
}

/// An HS256 token with exactly these claims (for `iss`, `aud`, `nbf` and malformed-claim
/// cases); `now()` gives the clock they are relative to.
pub fn hs256_claims(secret: &str, claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode hs256")
}

/// Seconds since the Unix epoch, the clock of `exp`/`nbf`.
pub fn unix_now() -> i64 {
    now()
}
