//! Authentication at the WebSocket upgrade: JWT (HS256 or RS256) or the insecure dev mode.

use crate::config::{AuthConfig, AuthMode, JwtAlgorithm};
use crate::protocol::SUBPROTOCOL;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Prefix of a token carried in `Sec-WebSocket-Protocol` (`bearer.<jwt>`).
pub const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// Longest accepted user id.
pub const MAX_USER_LEN: usize = 128;

/// Verifies credentials presented at the upgrade.
pub struct Authenticator {
    mode: AuthMode,
    key: Option<DecodingKey>,
    validation: Validation,
}

/// Why an upgrade was refused with 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in header, subprotocol or query.
    #[error("missing token: send Authorization: Bearer <jwt>, Sec-WebSocket-Protocol bearer.<jwt>, or ?token=<jwt>")]
    Missing,
    /// Signature, algorithm, expiry or claims did not verify.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Dev mode without `?user=`.
    #[error("insecure dev mode: add ?user=<name>")]
    MissingUser,
    /// User id empty, too long or with control characters.
    #[error("invalid user id")]
    BadUser,
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key file unreadable.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// PEM not an RSA public key.
    #[error("auth.jwt public key is not a valid RSA PEM key: {0}")]
    Pem(String),
    /// No key configured for the algorithm.
    #[error("no key configured for {0:?}")]
    NoKey(JwtAlgorithm),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Credentials found in an upgrade request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Presented {
    /// From `Authorization: Bearer`.
    pub bearer: Option<String>,
    /// From `Sec-WebSocket-Protocol: bearer.<jwt>`.
    pub subprotocol: Option<String>,
    /// From `?token=`.
    pub query_token: Option<String>,
    /// From `?user=` (insecure mode only).
    pub query_user: Option<String>,
}

/// Picks the subprotocol to echo: `chatgw.v1` if offered, else the offered bearer entry
/// (a browser fails the handshake unless one of its offers is echoed).
pub fn chosen_subprotocol(offered: &[&str]) -> Option<String> {
    if offered.contains(&SUBPROTOCOL) {
        return Some(SUBPROTOCOL.to_string());
    }
    offered
        .iter()
        .find(|p| p.starts_with(SUBPROTOCOL_TOKEN_PREFIX))
        .map(|p| p.to_string())
}

/// Splits a `Sec-WebSocket-Protocol` header value into its offers.
pub fn parse_subprotocols(header: &str) -> Vec<&str> {
    header
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

impl Authenticator {
    /// Builds the verifier from config, reading key files once.
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        let jwt = &config.jwt;
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|source| KeyError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let (alg, key) = match config.mode {
            AuthMode::Insecure => (Algorithm::HS256, None),
            AuthMode::Jwt => match jwt.algorithm {
                JwtAlgorithm::HS256 => {
                    let secret = match (&jwt.secret, &jwt.secret_file) {
                        (Some(s), _) => s.clone(),
                        (None, Some(p)) => read(p)?.trim_end_matches(['\n', '\r']).to_string(),
                        (None, None) => return Err(KeyError::NoKey(jwt.algorithm)),
                    };
                    (
                        Algorithm::HS256,
                        Some(DecodingKey::from_secret(secret.as_bytes())),
                    )
                }
                JwtAlgorithm::RS256 => {
                    let pem = match (&jwt.public_key, &jwt.public_key_file) {
                        (Some(k), _) => k.clone(),
                        (None, Some(p)) => read(p)?,
                        (None, None) => return Err(KeyError::NoKey(jwt.algorithm)),
                    };
                    let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                        .map_err(|e| KeyError::Pem(e.to_string()))?;
                    (Algorithm::RS256, Some(key))
                }
            },
        };
        // Exactly one algorithm: a token's own `alg` header never chooses the check, which
        // rules out `none` and HS/RS confusion.
        let mut validation = Validation::new(alg);
        validation.leeway = jwt.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience is required: jsonwebtoken checks `iss` only when
        // the token has one, unless it is listed as a required claim.
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
        Ok(Authenticator {
            mode: config.mode,
            key,
            validation,
        })
    }

    /// Whether this is the insecure dev mode.
    pub fn insecure(&self) -> bool {
        self.mode == AuthMode::Insecure
    }

    /// Returns the authenticated user id.
    pub fn authenticate(&self, presented: &Presented) -> Result<String, AuthError> {
        let user = match (&self.mode, &self.key) {
            (AuthMode::Insecure, _) => {
                presented.query_user.clone().ok_or(AuthError::MissingUser)?
            }
            (AuthMode::Jwt, Some(key)) => {
                let token = presented
                    .bearer
                    .as_ref()
                    .or(presented.subprotocol.as_ref())
                    .or(presented.query_token.as_ref())
                    .ok_or(AuthError::Missing)?;
                jsonwebtoken::decode::<Claims>(token, key, &self.validation)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?
                    .claims
                    .sub
            }
            (AuthMode::Jwt, None) => return Err(AuthError::Invalid("no key configured".into())),
        };
        if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
            return Err(AuthError::BadUser);
        }
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtConfig;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct C<'a> {
        sub: &'a str,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        nbf: Option<u64>,
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs(secret: &str) -> Authenticator {
        Authenticator::new(&AuthConfig {
            mode: AuthMode::Jwt,
            jwt: JwtConfig {
                secret: Some(secret.into()),
                leeway: std::time::Duration::ZERO,
                ..Default::default()
            },
        })
        .expect("authenticator")
    }

    fn token(secret: &str, claims: &C) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn bearer(t: String) -> Presented {
        Presented {
            bearer: Some(t),
            ..Default::default()
        }
    }

    #[test]
    fn hs256_accepts_valid_and_refuses_expired_early_and_forged() {
        let a = hs("s3cret");
        let ok = token(
            "s3cret",
            &C {
                sub: "alice",
                exp: now() + 60,
                nbf: None,
            },
        );
        assert_eq!(a.authenticate(&bearer(ok)), Ok("alice".into()));
        let expired = token(
            "s3cret",
            &C {
                sub: "alice",
                exp: now() - 10,
                nbf: None,
            },
        );
        assert!(matches!(
            a.authenticate(&bearer(expired)),
            Err(AuthError::Invalid(_))
        ));
        let early = token(
            "s3cret",
            &C {
                sub: "alice",
                exp: now() + 60,
                nbf: Some(now() + 30),
            },
        );
        assert!(matches!(
            a.authenticate(&bearer(early)),
            Err(AuthError::Invalid(_))
        ));
        let forged = token(
            "other",
            &C {
                sub: "alice",
                exp: now() + 60,
                nbf: None,
            },
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
    fn alg_none_is_refused() {
        let a = hs("s3cret");
        // header {"alg":"none","typ":"JWT"}, claims {"sub":"alice","exp":9999999999}
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(
            a.authenticate(&bearer(none.into())),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn token_sources_and_subprotocol_choice() {
        let a = hs("k");
        let t = token(
            "k",
            &C {
                sub: "bob",
                exp: now() + 60,
                nbf: None,
            },
        );
        let via_sub = Presented {
            subprotocol: Some(t.clone()),
            ..Default::default()
        };
        let via_query = Presented {
            query_token: Some(t),
            ..Default::default()
        };
        assert_eq!(a.authenticate(&via_sub), Ok("bob".into()));
        assert_eq!(a.authenticate(&via_query), Ok("bob".into()));
        assert_eq!(
            chosen_subprotocol(&["bearer.x", "chatgw.v1"]),
            Some("chatgw.v1".into())
        );
        assert_eq!(chosen_subprotocol(&["bearer.x"]), Some("bearer.x".into()));
        assert_eq!(chosen_subprotocol(&["other"]), None);
        assert_eq!(parse_subprotocols(" a , b,,"), ["a", "b"]);
    }

    #[test]
    fn insecure_mode_takes_user_from_query() {
        let a = Authenticator::new(&AuthConfig {
            mode: AuthMode::Insecure,
            jwt: Default::default(),
        })
        .expect("authenticator");
        let p = Presented {
            query_user: Some("carol".into()),
            ..Default::default()
        };
        assert_eq!(a.authenticate(&p), Ok("carol".into()));
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
}
