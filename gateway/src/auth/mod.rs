//! Authentication: the connection token at the WebSocket upgrade (JWT, or the insecure
//! dev mode's `?user=`), `refresh` tokens, and room subscription tokens; all verified
//! against the keys in [`keys`], reloaded when their files change.

pub mod claims;
pub mod keys;
pub mod mint;

pub use claims::{Grants, Identity, Rights, RoomGrant};
pub use keys::KeyError;

use crate::config::{AuthConfig, AuthMode, Config, DmPolicy, JoinPolicy};
use crate::protocol::SUBPROTOCOL;
use claims::ClaimValues;
use jsonwebtoken::Validation;
use keys::KeySet;
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex, RwLock};

/// Prefix of a token carried in `Sec-WebSocket-Protocol` (`bearer.<jwt>`).
pub const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// Longest accepted user id.
pub const MAX_USER_LEN: usize = 128;

/// Verifies credentials: connection tokens, refreshes and subscription tokens.
pub struct Authenticator {
    config: AuthConfig,
    keys: RwLock<Arc<KeySet>>,
    /// Contents stamp of the key files the keys were loaded from.
    stamp: Mutex<u64>,
    /// Claims that namespace policies refer to (kept per connection).
    wanted_claims: Vec<String>,
}

/// Why an upgrade was refused with 401, or a token in a command was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in header, subprotocol or query.
    #[error("missing token: send Authorization: Bearer <jwt>, or Sec-WebSocket-Protocol chatgw.v1, bearer.<jwt>")]
    Missing,
    /// Signature, algorithm, key, expiry or claims did not verify.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Dev mode without `?user=`.
    #[error("insecure dev mode: add ?user=<name>")]
    MissingUser,
    /// User id empty, too long or with control characters.
    #[error("invalid user id")]
    BadUser,
}

/// Credentials found in an upgrade request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Presented {
    /// From `Authorization: Bearer`.
    pub bearer: Option<String>,
    /// From `Sec-WebSocket-Protocol: bearer.<jwt>`.
    pub subprotocol: Option<String>,
    /// From `?token=` (ignored unless `auth.queryToken`).
    pub query_token: Option<String>,
    /// From `?user=` (insecure mode only).
    pub query_user: Option<String>,
}

/// Picks the subprotocol to echo: `chatgw.v1` when offered. A `bearer.<jwt>` offer is
/// never echoed: the token would end up in response headers and logs. (A browser that
/// offers only `bearer.<jwt>` fails the handshake; clients offer `chatgw.v1` beside it.)
pub fn chosen_subprotocol(offered: &[&str]) -> Option<String> {
    offered
        .contains(&SUBPROTOCOL)
        .then(|| SUBPROTOCOL.to_string())
}

/// Splits a `Sec-WebSocket-Protocol` header value into its offers.
pub fn parse_subprotocols(header: &str) -> Vec<&str> {
    header
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The claim names a config's namespace policies refer to.
fn policy_claims(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .namespaces
        .iter()
        .flat_map(|n| {
            let join = match &n.join {
                JoinPolicy::Claim(c) => Some(c.clone()),
                _ => None,
            };
            let dm = match &n.dm {
                DmPolicy::Claim(c) => Some(c.clone()),
                _ => None,
            };
            join.into_iter().chain(dm)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

impl Authenticator {
    /// Builds the verifier from config, reading the key files.
    pub fn new(config: &Config) -> Result<Self, KeyError> {
        let auth = &config.auth;
        let keys = match auth.mode {
            AuthMode::Insecure => KeySet::default(),
            AuthMode::Jwt => keys::load(&auth.jwt)?,
        };
        Ok(Authenticator {
            config: auth.clone(),
            keys: RwLock::new(Arc::new(keys)),
            stamp: Mutex::new(keys::sources_stamp(&auth.jwt)),
            wanted_claims: policy_claims(config),
        })
    }

    /// Whether this is the insecure dev mode.
    pub fn insecure(&self) -> bool {
        self.config.mode == AuthMode::Insecure
    }

    /// How often the key files are checked.
    pub fn reload_interval(&self) -> std::time::Duration {
        self.config.jwt.reload_interval
    }

    /// Re-reads the key files if their contents changed. `Ok(true)`: new keys are in force.
    /// A broken file keeps the old keys (and is reported).
    pub fn reload(&self) -> Result<bool, KeyError> {
        if self.insecure() {
            return Ok(false);
        }
        let stamp = keys::sources_stamp(&self.config.jwt);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == stamp {
            return Ok(false);
        }
        let fresh = keys::load(&self.config.jwt)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        *last = stamp;
        Ok(true)
    }

    /// Whether the JWKS key `kid` is still in force.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.key_set().has_kid(kid)
    }

    fn key_set(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Verifies a token's signature and standard claims; returns its claims and `kid`.
    fn verify(&self, token: &str) -> Result<(Map<String, Value>, Option<String>), AuthError> {
        let invalid = |e: &dyn std::fmt::Display| AuthError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e))?;
        let keys = self.key_set();
        let key = keys
            .find(header.kid.as_deref())
            .ok_or_else(|| match &header.kid {
                Some(kid) => AuthError::Invalid(format!("unknown key id {kid:?}")),
                None => {
                    AuthError::Invalid("token has no kid and no default key is configured".into())
                }
            })?;
        // Exactly the key's algorithm: a token's own `alg` header never chooses the check,
        // which rules out `none` and HS/RS confusion.
        let jwt = &self.config.jwt;
        let mut validation = Validation::new(key.alg);
        validation.leeway = jwt.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely match when present.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &jwt.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &jwt.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| invalid(&e))?;
        Ok((data.claims, header.kid))
    }

    /// Verifies the credentials of an upgrade; returns who connects and what they may do.
    pub fn authenticate(&self, presented: &Presented) -> Result<Identity, AuthError> {
        if self.insecure() {
            let user = presented.query_user.clone().ok_or(AuthError::MissingUser)?;
            check_user(&user)?;
            return Ok(Identity {
                user,
                ..Default::default()
            });
        }
        let query = presented
            .query_token
            .as_ref()
            .filter(|_| self.config.query_token);
        let token = presented
            .bearer
            .as_ref()
            .or(presented.subprotocol.as_ref())
            .or(query)
            .ok_or(AuthError::Missing)?;
        self.connection_token(token, None)
    }

    /// Verifies a connection token (at the upgrade, or in `refresh`, where it must name
    /// `user`). A subscription token (it has a `room` claim) is not a connection token.
    pub fn connection_token(&self, token: &str, user: Option<&str>) -> Result<Identity, AuthError> {
        let (claims, kid) = self.verify(token)?;
        if claims.contains_key("room") {
            return Err(AuthError::Invalid(
                "a room subscription token cannot open a connection".into(),
            ));
        }
        let sub = subject(&claims)?;
        check_user(&sub)?;
        if user.is_some_and(|u| u != sub) {
            return Err(AuthError::Invalid("token is for another user".into()));
        }
        Ok(Identity {
            expires_at: claims.get("exp").and_then(Value::as_u64),
            kid: kid.map(Into::into),
            grants: Grants::from_claim(claims.get(&self.config.jwt.rooms_claim)),
            claims: ClaimValues::pick(&claims, &self.wanted_claims),
            user: sub,
        })
    }

    /// Verifies a subscription token: `user`'s grant of `room` (claims `sub`, `room`,
    /// `exp`, optional `rights`).
    pub fn room_token(&self, token: &str, user: &str, room: &str) -> Result<RoomGrant, AuthError> {
        if self.insecure() {
            return Err(AuthError::Invalid(
                "subscription tokens need auth.mode: jwt".into(),
            ));
        }
        let (claims, _) = self.verify(token)?;
        if subject(&claims)? != user {
            return Err(AuthError::Invalid("token is for another user".into()));
        }
        if claims.get("room").and_then(Value::as_str) != Some(room) {
            return Err(AuthError::Invalid("token is for another room".into()));
        }
        Ok(RoomGrant {
            rights: claims::room_rights(&claims),
            expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

fn subject(claims: &Map<String, Value>) -> Result<String, AuthError> {
    claims
        .get("sub")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| AuthError::Invalid("sub must be a string".into()))
}

fn check_user(user: &str) -> Result<(), AuthError> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
        return Err(AuthError::BadUser);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn config(edit: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        c.auth.jwt.secret = Some(SECRET.into());
        c.auth.jwt.audience = Some("chat".into());
        c.auth.jwt.leeway = std::time::Duration::ZERO;
        edit(&mut c);
        c
    }

    fn auth(edit: impl FnOnce(&mut Config)) -> Authenticator {
        Authenticator::new(&config(edit)).expect("authenticator")
    }

    fn sign(secret: &str, kid: Option<&str>, claims: Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(Into::into);
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn good(extra: Value) -> Value {
        let mut c = json!({"sub": "alice", "exp": now() + 60, "aud": "chat"});
        if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
            c.extend(e);
        }
        c
    }

    fn bearer(t: String) -> Presented {
        Presented {
            bearer: Some(t),
            ..Default::default()
        }
    }

    fn refused(a: &Authenticator, claims: Value) -> bool {
        matches!(
            a.authenticate(&bearer(sign(SECRET, None, claims))),
            Err(AuthError::Invalid(_))
        )
    }

    #[test]
    fn valid_tokens_pass_and_expired_early_forged_or_misaddressed_ones_do_not() {
        let a = auth(|c| c.auth.jwt.issuer = Some("idp".into()));
        let ok = sign(SECRET, None, good(json!({"iss": "idp"})));
        let id = a.authenticate(&bearer(ok)).expect("valid");
        assert_eq!(id.user, "alice");
        assert!(id.expires_at.is_some_and(|e| e > now()));
        assert!(
            refused(&a, good(json!({"iss": "idp", "exp": now() - 10}))),
            "expired"
        );
        assert!(
            refused(&a, good(json!({"iss": "idp", "nbf": now() + 30}))),
            "not yet valid"
        );
        assert!(refused(&a, good(json!({"iss": "other"}))), "wrong iss");
        assert!(
            refused(&a, good(json!({"iss": "idp", "aud": "billing"}))),
            "wrong aud"
        );
        assert!(
            refused(&a, json!({"sub": "alice", "exp": now() + 60, "iss": "idp"})),
            "no aud"
        );
        let forged = sign(
            "another-secret-another-secret-xx",
            None,
            good(json!({"iss": "idp"})),
        );
        assert!(matches!(
            a.authenticate(&bearer(forged)),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            a.authenticate(&Presented::default()),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn leeway_tolerates_a_just_expired_token() {
        let a = auth(|c| c.auth.jwt.leeway = std::time::Duration::from_secs(30));
        let t = sign(SECRET, None, good(json!({"exp": now() - 5})));
        assert!(a.authenticate(&bearer(t)).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let a = auth(|_| {});
        // header {"alg":"none","typ":"JWT"}, claims {"sub":"alice","exp":9999999999}
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(
            a.authenticate(&bearer(none.into())),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn short_secrets_are_refused_at_start() {
        let mut c = config(|_| {});
        c.auth.jwt.secret = Some("short".into());
        let e = Authenticator::new(&c).err().expect("refused");
        assert!(e.to_string().contains("shorter than 32 bytes"), "{e}");
    }

    #[test]
    fn token_sources_and_the_query_switch() {
        let t = sign(SECRET, None, good(json!({})));
        let via_sub = Presented {
            subprotocol: Some(t.clone()),
            ..Default::default()
        };
        let via_query = Presented {
            query_token: Some(t),
            ..Default::default()
        };
        let a = auth(|_| {});
        assert_eq!(a.authenticate(&via_sub).map(|i| i.user), Ok("alice".into()));
        assert_eq!(
            a.authenticate(&via_query).map(|i| i.user),
            Ok("alice".into())
        );
        let no_query = auth(|c| c.auth.query_token = false);
        assert_eq!(no_query.authenticate(&via_query), Err(AuthError::Missing));
    }

    #[test]
    fn a_bearer_subprotocol_is_never_echoed() {
        assert_eq!(
            chosen_subprotocol(&["bearer.x", "chatgw.v1"]),
            Some("chatgw.v1".into())
        );
        assert_eq!(chosen_subprotocol(&["bearer.x"]), None);
        assert_eq!(chosen_subprotocol(&["other"]), None);
        assert_eq!(parse_subprotocols(" a , b,,"), ["a", "b"]);
    }

    #[test]
    fn insecure_mode_takes_user_from_query() {
        let mut c = Config::default();
        c.auth.mode = AuthMode::Insecure;
        let a = Authenticator::new(&c).expect("authenticator");
        let p = Presented {
            query_user: Some("carol".into()),
            ..Default::default()
        };
        assert_eq!(a.authenticate(&p).map(|i| i.user), Ok("carol".into()));
        assert_eq!(
            a.authenticate(&Presented::default()),
            Err(AuthError::MissingUser)
        );
        let bad = Presented {
            query_user: Some("x\ny".into()),
            ..Default::default()
        };
        assert_eq!(a.authenticate(&bad), Err(AuthError::BadUser));
    }

    #[test]
    fn grants_and_policy_claims_come_from_the_token() {
        let a = auth(|c| {
            c.namespaces.push(crate::config::NamespaceConfig {
                prefix: "team:".into(),
                join: JoinPolicy::Claim("teams".into()),
                ..Default::default()
            })
        });
        let t = sign(
            SECRET,
            None,
            good(json!({"rooms": {"vip": ["join"]}, "teams": ["blue"], "other": ["x"]})),
        );
        let id = a.authenticate(&bearer(t)).expect("valid");
        assert_eq!(
            id.grants.rights("vip"),
            Rights {
                join: true,
                send: false
            }
        );
        assert!(id.claims.lists("teams", "blue"));
        assert!(
            !id.claims.lists("other", "x"),
            "only claims a policy names are kept"
        );
    }

    #[test]
    fn room_tokens_are_bound_to_user_and_room_and_are_not_connection_tokens() {
        let a = auth(|_| {});
        let t = sign(
            SECRET,
            None,
            good(json!({"room": "secret", "rights": ["join"]})),
        );
        let g = a.room_token(&t, "alice", "secret").expect("grant");
        assert_eq!(
            g.rights,
            Rights {
                join: true,
                send: false
            }
        );
        assert!(a.room_token(&t, "bob", "secret").is_err(), "another user");
        assert!(a.room_token(&t, "alice", "other").is_err(), "another room");
        assert!(
            a.authenticate(&bearer(t)).is_err(),
            "not a connection token"
        );
        let conn = sign(SECRET, None, good(json!({})));
        assert!(
            a.room_token(&conn, "alice", "secret").is_err(),
            "no room claim"
        );
        assert!(
            a.connection_token(&conn, Some("bob")).is_err(),
            "refresh for another user"
        );
    }

    #[test]
    fn jwks_keys_by_kid_reload_and_revocation() {
        let dir = std::env::temp_dir().join(format!("chatgw-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("jwks.json");
        let oct = |kid: &str, secret: &str| {
            use base64::Engine as _;
            json!({"kty": "oct", "kid": kid, "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)})
        };
        let k1 = "key-one-key-one-key-one-key-one-";
        let k2 = "key-two-key-two-key-two-key-two-";
        std::fs::write(&file, json!({"keys": [oct("one", k1)]}).to_string()).expect("write");
        let a = auth(|c| {
            c.auth.jwt.secret = None;
            c.auth.jwt.jwks_file = Some(file.clone());
        });
        let by = |kid: &str, secret: &str| bearer(sign(secret, Some(kid), good(json!({}))));
        assert_eq!(
            a.authenticate(&by("one", k1)).map(|i| i.kid),
            Ok(Some("one".into()))
        );
        assert!(a.authenticate(&by("two", k2)).is_err(), "unknown kid");
        assert!(!a.reload().expect("reload"), "unchanged");
        std::fs::write(&file, json!({"keys": [oct("two", k2)]}).to_string()).expect("write");
        assert!(a.reload().expect("reload"));
        assert!(a.authenticate(&by("two", k2)).is_ok(), "rotated in");
        assert!(
            !a.has_kid("one"),
            "rotated out: connections verified by it are revoked"
        );
        std::fs::write(&file, "{not json").expect("write");
        assert!(a.reload().is_err(), "a broken file is reported");
        assert!(
            a.authenticate(&by("two", k2)).is_ok(),
            "and the keys in force stay"
        );
        std::fs::write(
            &file,
            json!({"keys": [oct("short", "too-short")]}).to_string(),
        )
        .expect("write");
        assert!(a.reload().is_err(), "short oct keys are refused too");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
