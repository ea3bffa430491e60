//! Verification keys: one configured key and/or a JWKS file of keys selected by `kid`,
//! re-read when the files change so keys rotate without a restart.

use crate::config::{JwtAlgorithm, JwtConfig, MIN_HS256_SECRET};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

/// Why keys could not be loaded.
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
    /// A key that cannot be used.
    #[error("{0}")]
    Invalid(String),
}

/// One verification key and the only algorithm it verifies.
pub struct Key {
    /// Algorithm; a token's `alg` header must name exactly this one.
    pub alg: Algorithm,
    /// The key.
    pub key: DecodingKey,
}

/// The keys in force.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Key>,
    single: Option<Key>,
    /// The checks of a token verified by a key of each algorithm in the set, built with
    /// the set rather than per token (a few allocations each connect saves).
    validations: HashMap<Algorithm, Validation>,
}

impl KeySet {
    /// The key for a token's `kid`: the JWKS key of that id; without a `kid`, the single
    /// configured key (or the JWKS key, when the set holds exactly one). With it, the id of
    /// the JWKS key chosen (what a connection is revoked by when the key is removed, also
    /// for a token that named none) and the checks a token verified by that key must pass.
    pub fn find(&self, kid: Option<&str>) -> Option<(Option<&str>, &Key, &Validation)> {
        let (kid, key) = match kid {
            Some(kid) => self
                .by_kid
                .get_key_value(kid)
                .map(|(k, v)| (Some(k.as_str()), v)),
            None => match &self.single {
                Some(key) => Some((None, key)),
                None if self.by_kid.len() == 1 => self
                    .by_kid
                    .iter()
                    .next()
                    .map(|(k, v)| (Some(k.as_str()), v)),
                None => None,
            },
        }?;
        Some((kid, key, self.validations.get(&key.alg)?))
    }

    /// Whether a JWKS key of this id is (still) in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

/// The raw contents of every key source, to notice a change cheaply.
pub fn sources_stamp(jwt: &JwtConfig) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in [&jwt.secret_file, &jwt.public_key_file, &jwt.jwks_file]
        .into_iter()
        .flatten()
    {
        std::fs::read(path).ok().hash(&mut h);
    }
    h.finish()
}

/// Loads every configured key.
pub fn load(jwt: &JwtConfig) -> Result<KeySet, KeyError> {
    let mut set = KeySet {
        single: single_key(jwt)?,
        ..Default::default()
    };
    if let Some(path) = &jwt.jwks_file {
        let text = read(path)?;
        let jwks: JwkSet = serde_json::from_str(&text).map_err(|e| {
            KeyError::Invalid(format!("{}: not a JWKS document: {e}", path.display()))
        })?;
        for jwk in &jwks.keys {
            let kid = jwk.common.key_id.clone().ok_or_else(|| {
                KeyError::Invalid(format!("{}: every key needs a kid", path.display()))
            })?;
            let key = jwk_key(jwk)
                .map_err(|e| KeyError::Invalid(format!("{}: key {kid:?}: {e}", path.display())))?;
            set.by_kid.insert(kid, key);
        }
    }
    if set.single.is_none() && set.by_kid.is_empty() {
        return Err(KeyError::Invalid("no verification key configured".into()));
    }
    let algs: Vec<Algorithm> = set
        .single
        .iter()
        .chain(set.by_kid.values())
        .map(|k| k.alg)
        .collect();
    for alg in algs {
        set.validations
            .entry(alg)
            .or_insert_with(|| validation(jwt, alg));
    }
    Ok(set)
}

/// The checks of a token verified by a key of `alg`: exactly that algorithm (a token's own
/// `alg` header never chooses the check, which rules out `none` and HS/RS confusion),
/// expiry and not-before with the configured leeway, and a configured issuer or audience
/// present, not merely matching when present.
fn validation(jwt: &JwtConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = jwt.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
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
    validation
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn hmac(secret: &[u8]) -> Result<Key, String> {
    if secret.len() < MIN_HS256_SECRET {
        return Err(format!(
            "HS256 secret shorter than {MIN_HS256_SECRET} bytes"
        ));
    }
    Ok(Key {
        alg: Algorithm::HS256,
        key: DecodingKey::from_secret(secret),
    })
}

fn single_key(jwt: &JwtConfig) -> Result<Option<Key>, KeyError> {
    let invalid = |e: String| KeyError::Invalid(format!("auth.jwt: {e}"));
    if jwt.algorithm == JwtAlgorithm::HS256 {
        let secret = match (&jwt.secret, &jwt.secret_file) {
            (Some(s), _) => s.clone(),
            (None, Some(p)) => read(p)?.trim_end_matches(['\n', '\r']).to_string(),
            (None, None) => return Ok(None),
        };
        return hmac(secret.as_bytes()).map(Some).map_err(invalid);
    }
    let pem = match (&jwt.public_key, &jwt.public_key_file) {
        (Some(k), _) => k.clone(),
        (None, Some(p)) => read(p)?,
        (None, None) => return Ok(None),
    };
    let (alg, key) = match jwt.algorithm {
        JwtAlgorithm::RS256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem.as_bytes())),
        JwtAlgorithm::ES256 => (Algorithm::ES256, DecodingKey::from_ec_pem(pem.as_bytes())),
        JwtAlgorithm::EdDSA => (Algorithm::EdDSA, DecodingKey::from_ed_pem(pem.as_bytes())),
        JwtAlgorithm::HS256 => return Ok(None), // handled above
    };
    let key = key.map_err(|e| {
        invalid(format!(
            "{:?} public key is not valid PEM: {e}",
            jwt.algorithm
        ))
    })?;
    Ok(Some(Key { alg, key }))
}

/// A JWK's key and algorithm: its `alg` if given, else the one its type implies.
fn jwk_key(jwk: &Jwk) -> Result<Key, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Algorithm::ES384,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return Err("unsupported key type or curve".into()),
    };
    let alg = match jwk.common.key_algorithm {
        Some(ka) => Algorithm::try_from(ka).map_err(|e| format!("alg: {e}"))?,
        None => implied,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        let secret = key.try_get_as_bytes().map_err(|e| e.to_string())?;
        hmac(secret)?;
    }
    Ok(Key { alg, key })
}
