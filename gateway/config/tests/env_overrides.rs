//! Environment overrides of secrets, ids and file paths are taken verbatim: read as YAML, a
//! secret lost what followed ` #` (a comment), its quotes or its padding, and an audience
//! `2024` was a number the loader refused.

use chat_gateway_config::Config;

/// Loads a JWT config from the environment alone (as docs/install.md passes the secret).
fn load(pairs: &[(&str, &str)]) -> Config {
    let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(None, vars).expect("loads")
}

#[test]
fn a_jwt_secret_survives_byte_for_byte() {
    for secret in [
        "0123456789abcdef0123456789abcdef #x",
        "\"0123456789abcdef0123456789abcdef\"",
        "  '0123456789abcdef0123456789abcdef' #x  ",
        "key: 0123456789abcdef0123456789abcdef",
        "[0123456789abcdef0123456789abcdef]",
    ] {
        let c = load(&[
            ("CHATGW_AUTH__JWT__SECRET", secret),
            ("CHATGW_AUTH__JWT__AUDIENCE", "chat"),
        ]);
        assert_eq!(c.auth.jwt.secret.as_deref(), Some(secret));
    }
}

#[test]
fn a_numeric_audience_and_issuer_are_strings() {
    let c = load(&[
        (
            "CHATGW_AUTH__JWT__SECRET",
            "0123456789abcdef0123456789abcdef",
        ),
        ("CHATGW_AUTH__JWT__AUDIENCE", "2024"),
        ("CHATGW_AUTH__JWT__ISSUER", "0x10"),
    ]);
    assert_eq!(c.auth.jwt.audience.as_deref(), Some("2024"));
    assert_eq!(c.auth.jwt.issuer.as_deref(), Some("0x10"));
}

#[test]
fn ids_and_file_paths_are_taken_verbatim() {
    let c = load(&[
        ("CHATGW_AUTH__JWT__JWKS_FILE", "/keys/jwks #1.json"),
        ("CHATGW_AUTH__JWT__AUDIENCE", "chat"),
        ("CHATGW_NODE__ID", "007"),
        ("CHATGW_API__KEYS_FILE", "/keys/api #1"),
    ]);
    assert_eq!(
        c.auth.jwt.jwks_file.as_deref(),
        Some(std::path::Path::new("/keys/jwks #1.json"))
    );
    assert_eq!(c.node.id, "007");
    assert_eq!(
        c.api.keys_file.as_deref(),
        Some(std::path::Path::new("/keys/api #1"))
    );
    let c = load(&[
        ("CHATGW_AUTH__JWT__ALGORITHM", "RS256"),
        ("CHATGW_AUTH__JWT__PUBLIC_KEY_FILE", "true"),
        ("CHATGW_AUTH__JWT__AUDIENCE", "chat"),
    ]);
    assert_eq!(
        c.auth.jwt.public_key_file.as_deref(),
        Some(std::path::Path::new("true"))
    );
}

#[test]
fn other_values_are_still_read_as_yaml() {
    let c = load(&[
        (
            "CHATGW_AUTH__JWT__SECRET",
            "0123456789abcdef0123456789abcdef",
        ),
        ("CHATGW_AUTH__JWT__AUDIENCE", "chat"),
        ("CHATGW_AUTH__JWT__LEEWAY", "10s # comment"),
        ("CHATGW_AUTH__JWT__REQUIRE_AUDIENCE", "true"),
    ]);
    assert_eq!(c.auth.jwt.leeway, std::time::Duration::from_secs(10));
}

/// Taken verbatim, an empty variable sets an empty string (read as YAML it was null:
/// unset). An empty audience or issuer would be required of every token, an empty path
/// names no file: refused at start rather than run that way.
#[test]
fn an_empty_optional_string_is_refused_not_required_of_tokens() {
    for (var, key) in [
        ("CHATGW_AUTH__JWT__ISSUER", "auth.jwt.issuer"),
        ("CHATGW_AUTH__JWT__AUDIENCE", "auth.jwt.audience"),
        ("CHATGW_AUTH__JWT__JWKS_FILE", "auth.jwt.jwksFile"),
    ] {
        let vars = [
            (
                "CHATGW_AUTH__JWT__SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
            ("CHATGW_AUTH__JWT__AUDIENCE", "chat"),
            (var, ""),
        ];
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let e = Config::load(None, vars).expect_err("empty");
        assert!(
            e.to_string().contains(&format!("{key} is set but empty")),
            "{e}"
        );
    }
}
