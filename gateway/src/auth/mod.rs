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
use keys::KeySet;
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex, RwLock};

/// Prefix of a token carried in `Sec-WebSocket-Protocol` (`bearer.<jwt>`).
pub const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// Longest accepted user id.
pub const MAX_USER_LEN: usize = 128;

/// The latest `exp` taken as it is (the end of year 9999, Unix seconds): a later one is
/// read as this. The gateway counts expiries in milliseconds, and an `exp` past about
/// 1.8e16 made `exp * 1000` overflow: a panic of the connection's task in a debug build,
/// a wrap to an immediate expiry in a release build.
const LATEST_EXP: u64 = 253_402_300_799;

/// A token's `exp`, at most [`LATEST_EXP`]. A fraction is rounded, as the JWT library
/// does when it checks the claim (`time.time() + 300` in Python gives one): read as an
/// integer only, a fractional `exp` passed verification and then gave a connection that
/// never expired.
fn expiry(claims: &Map<String, Value>) -> Option<u64> {
    let exp = claims.get("exp")?;
    let secs = exp.as_u64().or_else(|| {
        exp.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            // Saturating: a later exp is clamped below anyway.
            .map(|f| f.round() as u64)
    })?;
    Some(secs.min(LATEST_EXP))
}

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

    /// Verifies a token's signature and standard claims; returns its claims and the id of
    /// the JWKS key that verified it.
    fn verify(&self, token: &str) -> Result<(Map<String, Value>, Option<String>), AuthError> {
        let invalid = |e: &dyn std::fmt::Display| AuthError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e))?;
        let keys = self.key_set();
        let unknown = || match &header.kid {
            Some(kid) => AuthError::Invalid(format!("unknown key id {kid:?}")),
            None => AuthError::Invalid("token has no kid and no default key is configured".into()),
        };
        let (kid, key, validation) = keys.find(header.kid.as_deref()).ok_or_else(unknown)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| invalid(&e))?;
        Ok((data.claims, kid.map(str::to_string)))
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
            expires_at: expiry(&claims),
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
        let (claims, kid) = self.verify(token)?;
        if subject(&claims)? != user {
            return Err(AuthError::Invalid("token is for another user".into()));
        }
        if claims.get("room").and_then(Value::as_str) != Some(room) {
            return Err(AuthError::Invalid("token is for another room".into()));
        }
        Ok(RoomGrant {
            rights: claims::room_rights(&claims),
            expires_at: expiry(&claims).unwrap_or(0),
            kid: kid.map(Into::into),
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

/// A user id as a token may carry it: 1 to 128 bytes, no control characters.
pub(crate) fn check_user(user: &str) -> Result<(), AuthError> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
        return Err(AuthError::BadUser);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
