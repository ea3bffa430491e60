//! Signing keys made with the `openssl` command for the key-rotation tests, and their
//! public halves as JWKs (RFC 7517).

use base64::Engine as _;
use serde_json::{json, Value};
use std::process::Command;

/// A private key (PEM) and its public JWK.
pub struct TestKey {
    /// PKCS#8 private key, PEM.
    pub private_pem: String,
    /// The public key as a JWK, with `kid`.
    pub jwk: Value,
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl (Debian package openssl) runs");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).expect("write to openssl");
    }
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl {args:?} failed");
    out.stdout
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new ECDSA P-256 key (ES256).
pub fn es256(kid: &str) -> TestKey {
    let pem = openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        None,
    );
    let der = openssl(&["pkey", "-pubout", "-outform", "DER"], Some(&pem));
    // SubjectPublicKeyInfo ends with the uncompressed point 0x04 || X || Y.
    let point = &der[der.len() - 65..];
    assert_eq!(point[0], 4, "uncompressed point");
    TestKey {
        private_pem: String::from_utf8_lossy(&pem).into(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                    "x": b64(&point[1..33]), "y": b64(&point[33..])}),
    }
}

/// A new Ed25519 key (EdDSA).
pub fn ed25519(kid: &str) -> TestKey {
    let pem = openssl(&["genpkey", "-algorithm", "ed25519"], None);
    let der = openssl(&["pkey", "-pubout", "-outform", "DER"], Some(&pem));
    TestKey {
        private_pem: String::from_utf8_lossy(&pem).into(),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
                    "x": b64(&der[der.len() - 32..])}),
    }
}

/// An HS256 JWK of `secret`.
pub fn oct(kid: &str, secret: &str) -> Value {
    json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64(secret.as_bytes())})
}
