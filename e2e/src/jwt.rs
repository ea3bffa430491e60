//! JWT helpers for tests and the load generator.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// An HS256 token for `sub` expiring `ttl_secs` from now (negative: already expired).
pub fn hs256(secret: &str, sub: &str, ttl_secs: i64) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &Claims {
            sub,
            exp: now() + ttl_secs,
        },
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode hs256")
}

/// An RS256 token signed with a PEM private key.
pub fn rs256(private_pem: &str, sub: &str, ttl_secs: i64) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("rsa private key");
    encode(
        &Header::new(Algorithm::RS256),
        &Claims {
            sub,
            exp: now() + ttl_secs,
        },
        &key,
    )
    .expect("encode rs256")
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
