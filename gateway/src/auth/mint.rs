//! Minting tokens with the configured key: `chat-gateway token` for docs, demos and tests.
//! A production backend mints its own; this signs with the gateway's HS256 secret (or a
//! private key given on the command line for the asymmetric algorithms).

use crate::config::{JwtAlgorithm, JwtConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// What to put in a token.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// `sub`.
    pub user: String,
    /// Lifetime from now.
    pub ttl: Duration,
    /// A subscription token for this room (else a connection token).
    pub room: Option<String>,
    /// Rooms claim of a connection token: `(pattern, rights)`; rights `join`, `send`.
    pub rooms: Vec<(String, Vec<String>)>,
    /// Rights of a subscription token (default join and send).
    pub rights: Vec<String>,
    /// `kid` header (to pick a JWKS key).
    pub kid: Option<String>,
    /// Further claims (`teams=blue,red` for a `claim:teams` policy).
    pub claims: Vec<(String, Vec<String>)>,
}

/// The signing key: the configured HS256 secret, or a PEM private key for `alg`.
pub fn signing_key(
    jwt: &JwtConfig,
    private_key: Option<(&str, JwtAlgorithm)>,
) -> Result<(Algorithm, EncodingKey), String> {
    let pem = |alg, text: &str| {
        let key = match alg {
            JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(text.as_bytes()),
            JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(text.as_bytes()),
            JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(text.as_bytes()),
            JwtAlgorithm::HS256 => Ok(EncodingKey::from_secret(text.trim_end().as_bytes())),
        };
        let alg = match alg {
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::EdDSA => Algorithm::EdDSA,
            JwtAlgorithm::HS256 => Algorithm::HS256,
        };
        key.map(|k| (alg, k))
            .map_err(|e| format!("private key: {e}"))
    };
    if let Some((text, alg)) = private_key {
        return pem(alg, text);
    }
    let secret = match (&jwt.secret, &jwt.secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => {
            return Err(
                "no HS256 secret configured (auth.jwt.secret or secretFile): pass --private-key and --alg"
                    .into(),
            )
        }
    };
    pem(JwtAlgorithm::HS256, &secret)
}

/// Signs a token for `spec` with the configured issuer and audience.
pub fn mint(
    jwt: &JwtConfig,
    spec: &TokenSpec,
    key: (Algorithm, EncodingKey),
) -> Result<String, String> {
    let (alg, key) = key;
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(spec.user));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + spec.ttl.as_secs()));
    if let Some(aud) = &jwt.audience {
        claims.insert("aud".into(), json!(aud));
    }
    if let Some(iss) = &jwt.issuer {
        claims.insert("iss".into(), json!(iss));
    }
    if let Some(room) = &spec.room {
        claims.insert("room".into(), json!(room));
        if !spec.rights.is_empty() {
            claims.insert("rights".into(), json!(spec.rights));
        }
    } else if !spec.rooms.is_empty() {
        let rooms: Map<String, Value> = spec
            .rooms
            .iter()
            .map(|(pattern, rights)| (pattern.clone(), json!(rights)))
            .collect();
        claims.insert(jwt.rooms_claim.clone(), Value::Object(rooms));
    }
    for (name, values) in &spec.claims {
        claims.insert(name.clone(), json!(values));
    }
    let mut header = Header::new(alg);
    header.kid = spec.kid.clone();
    jsonwebtoken::encode(&header, &Value::Object(claims), &key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authenticator, Presented, Rights};
    use crate::config::Config;

    #[test]
    fn minted_tokens_verify_with_the_same_config() {
        let mut c = Config::default();
        c.auth.jwt.secret = Some("0123456789abcdef0123456789abcdef".into());
        c.auth.jwt.audience = Some("chat".into());
        c.auth.jwt.issuer = Some("me".into());
        let auth = Authenticator::new(&c).expect("auth");
        let key = || signing_key(&c.auth.jwt, None).expect("key");
        let spec = TokenSpec {
            user: "alice".into(),
            ttl: Duration::from_secs(60),
            rooms: vec![("team:*".into(), vec!["join".into()])],
            ..Default::default()
        };
        let token = mint(&c.auth.jwt, &spec, key()).expect("mint");
        let id = auth
            .authenticate(&Presented {
                bearer: Some(token),
                ..Default::default()
            })
            .expect("verifies");
        assert_eq!(id.user, "alice");
        assert_eq!(
            id.grants.rights("team:x"),
            Rights {
                join: true,
                send: false
            }
        );
        let room = TokenSpec {
            room: Some("secret".into()),
            rights: vec!["join".into()],
            ..spec
        };
        let token = mint(&c.auth.jwt, &room, key()).expect("mint");
        assert_eq!(
            auth.room_token(&token, "alice", "secret").map(|g| g.rights),
            Ok(Rights {
                join: true,
                send: false
            })
        );
    }
}
