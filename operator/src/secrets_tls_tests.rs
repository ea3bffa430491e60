//! The Redis TLS Secrets: read, checked, hashed and watched like the Redis credentials.

use super::*;
use crate::builders::testing::cgw;

const AUTH: &str = "auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}";
const MUTUAL: &str = "tls: {caSecretRef: {name: redis-tls, key: ca.crt}, clientCertSecretRef: {name: redis-client, key: tls.crt}, clientKeySecretRef: {name: redis-client, key: tls.key}}";

fn gateway(redis: &str) -> ChatGateway {
    cgw(&format!("gateway: {{{AUTH}, redis: {redis}}}"))
}

/// Each reference as `secret/key purpose rolls-pods`, in the order refs() gives.
fn described(c: &ChatGateway) -> Vec<String> {
    refs(&c.spec)
        .iter()
        .map(|(r, p)| format!("{}/{} {p:?} {}", r.name, r.key, p.rolls_pods()))
        .collect()
}

#[test]
fn the_tls_files_are_read_after_the_credentials_and_roll_the_pods() {
    let c = gateway(&format!(
        "{{urlSecretRef: {{name: redis, key: url}}, passwordSecretRef: {{name: redis, key: pw}}, {MUTUAL}}}"
    ));
    assert_eq!(
        described(&c),
        [
            "redis/url RedisUrl { tls: true } true",
            "redis/pw RedisCredential true",
            "redis-tls/ca.crt RedisCa true",
            "redis-client/tls.crt RedisClientCert true",
            "redis-client/tls.key RedisClientKey true",
        ],
        "the gateway reads its TLS files once, at start: a new CA or certificate needs new pods"
    );
    // A Secret created or changed after the ChatGateway reconciles it at once.
    for secret in ["redis-tls", "redis-client"] {
        assert_eq!(gateways_using("apps", secret, [&c]).len(), 1, "{secret}");
    }
    assert!(gateways_using("apps", "unrelated", [&c]).is_empty());
}

#[test]
fn the_url_must_be_rediss_only_when_tls_is_set_and_the_url_is_the_seed() {
    let url_purpose = |redis: &str| {
        refs(&gateway(redis).spec)
            .into_iter()
            .find(|(r, _)| r.key == "url")
            .map(|(_, p)| p)
    };
    let url = "urlSecretRef: {name: redis, key: url}";
    let ca = "tls: {caSecretRef: {name: t, key: ca.crt}}";
    assert_eq!(
        url_purpose(&format!("{{{url}, {ca}}}")),
        Some(Purpose::RedisUrl { tls: true })
    );
    assert_eq!(
        url_purpose(&format!("{{mode: cluster, {url}, {ca}}}")),
        Some(Purpose::RedisUrl { tls: true })
    );
    assert_eq!(
        url_purpose(&format!("{{{url}}}")),
        Some(Purpose::RedisUrl { tls: false })
    );
    // With nodes the URL is not the seed: the nodes' schemes are checked by the schema.
    assert_eq!(
        url_purpose(&format!(
            "{{mode: cluster, nodes: ['rediss://a:6379'], {url}, {ca}}}"
        )),
        Some(Purpose::RedisUrl { tls: false })
    );

    let tls = Purpose::RedisUrl { tls: true };
    let err = check(tls, b"redis://:hunter2@redis.apps:6379").expect_err("plain URL");
    assert!(err.contains("use rediss://"), "{err}");
    assert!(!err.contains("hunter2"), "the value never shows: {err}");
    assert_eq!(check(tls, b"rediss://:hunter2@redis.apps:6380/0"), Ok(()));
    assert_eq!(
        check(Purpose::RedisUrl { tls: false }, b"redis://r:6379"),
        Ok(())
    );
}

#[test]
fn the_tls_files_must_be_pem_certificates_and_a_pem_key() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["redis.apps".into()]).expect("cert");
    let (cert, key) = (cert.pem(), signing_key.serialize_pem());
    let bundle = format!("# the old and the new CA\n{cert}{cert}");
    for purpose in [Purpose::RedisCa, Purpose::RedisClientCert] {
        assert_eq!(check(purpose, cert.as_bytes()), Ok(()), "{purpose:?}");
        assert_eq!(check(purpose, bundle.as_bytes()), Ok(()), "{purpose:?}");
        let err = check(purpose, key.as_bytes()).expect_err("a key is no certificate");
        assert!(err.contains("BEGIN CERTIFICATE"), "{err}");
        assert!(!err.contains(key.lines().nth(1).unwrap_or("-")), "{err}");
        let err = check(purpose, b"not pem").expect_err("not PEM");
        assert!(err.contains("BEGIN CERTIFICATE"), "{err}");
    }
    assert_eq!(check(Purpose::RedisClientKey, key.as_bytes()), Ok(()));
    for (key_pem, what) in [
        (cert.as_str(), "a certificate"),
        ("", "nothing"),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "an encrypted key",
        ),
    ] {
        let err = check(Purpose::RedisClientKey, key_pem.as_bytes()).expect_err(what);
        assert!(err.contains("PRIVATE KEY"), "{what}: {err}");
    }
}
