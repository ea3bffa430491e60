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
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
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
    // A token naming no key, verified by the set's only key, is revoked with that key:
    // its connection carries the key's id.
    let kidless = bearer(sign(k1, None, good(json!({}))));
    assert_eq!(
        a.authenticate(&kidless).map(|i| i.kid),
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

/// An `exp` the gateway's millisecond clock cannot hold (u64::MAX seconds) is read as the
/// end of year 9999: before, `exp * 1000` overflowed wherever the expiry was used.
#[test]
fn an_exp_past_year_9999_is_read_as_its_end() {
    let a = auth(|_| {});
    let far = |extra: Value| {
        let mut c = good(extra);
        c["exp"] = json!(u64::MAX);
        sign(SECRET, None, c)
    };
    let id = a.authenticate(&bearer(far(json!({})))).expect("valid");
    assert_eq!(id.expires_at, Some(253_402_300_799));
    let t = far(json!({"room": "r"}));
    let g = a.room_token(&t, "alice", "r").expect("grant");
    assert_eq!(g.expires_at, 253_402_300_799);
    assert!(g.expires_at.checked_mul(1000).is_some());
}

/// A fractional `exp` (Python's `time.time() + 300`) passes the JWT library's checks,
/// which round it; the gateway reads the same expiry: before, it read none, and the
/// connection (and a subscription by such a token) never expired.
#[test]
fn a_fractional_exp_is_an_expiry() {
    let a = auth(|_| {});
    let exp = now() + 60;
    let fractional = |extra: Value| {
        let mut c = good(extra);
        c["exp"] = json!(exp as f64 + 0.4);
        sign(SECRET, None, c)
    };
    let id = a
        .authenticate(&bearer(fractional(json!({}))))
        .expect("valid");
    assert_eq!(id.expires_at, Some(exp));
    let g = a
        .room_token(&fractional(json!({"room": "r"})), "alice", "r")
        .expect("grant");
    assert_eq!(g.expires_at, exp);
}
