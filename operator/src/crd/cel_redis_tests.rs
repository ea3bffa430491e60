//! The rules of `gateway.redis` (modes, seeds, Sentinels, credentials, TLS): accepted and
//! refused the same by CEL in both versions and by the operator, in the same words.

use super::*;

fn redis(section: &str) -> String {
    format!(
        "gateway: {{auth: {{mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}, redis: {section}}}\nreplicas: 2"
    )
}

#[test]
fn every_mode_is_accepted_with_its_addresses_and_credentials() {
    for section in [
        "{urlSecretRef: {name: r, key: url}}",
        "{mode: single, urlSecretRef: {name: r, key: url}, usernameSecretRef: {name: r, key: user}, passwordSecretRef: {name: r, key: pw}, keyPrefix: prod}",
        "{mode: cluster, nodes: ['redis://r-0.r:6379', 'redis://r-1.r:6379/']}",
        "{mode: cluster, nodes: ['rediss://r-0.r:6379', 'rediss://[fd00::1]:6379'], passwordSecretRef: {name: r, key: pw}}",
        "{mode: cluster, urlSecretRef: {name: r, key: url}}",
        "{mode: cluster, nodes: ['redis://r-0.r:6379'], urlSecretRef: {name: r, key: url}}",
        "{mode: sentinel, sentinel: {masterName: chat, addresses: ['redis://s-0.s:26379']}}",
        "{mode: sentinel, sentinel: {masterName: chat, addresses: ['rediss://s-0.s:26379', 'rediss://s-1.s:26379'], usernameSecretRef: {name: s, key: user}, passwordSecretRef: {name: s, key: pw}}, passwordSecretRef: {name: r, key: pw}}",
        // TLS: a private CA, a client certificate with its key, or both.
        "{urlSecretRef: {name: r, key: url}, tls: {caSecretRef: {name: t, key: ca.crt}}}",
        "{urlSecretRef: {name: r, key: url}, tls: {caSecretRef: {name: t, key: ca.crt}, clientCertSecretRef: {name: c, key: tls.crt}, clientKeySecretRef: {name: c, key: tls.key}}}",
        "{urlSecretRef: {name: r, key: url}, tls: {clientCertSecretRef: {name: c, key: tls.crt}, clientKeySecretRef: {name: c, key: tls.key}}}",
        "{urlSecretRef: {name: r, key: url}, tls: {}}",
        "{mode: cluster, nodes: ['rediss://r-0.r:6379', 'rediss://r-1.r:6379'], tls: {caSecretRef: {name: t, key: ca.crt}}}",
        // The seed is in a Secret: the operator checks its scheme when it reads it.
        "{mode: cluster, urlSecretRef: {name: r, key: url}, tls: {caSecretRef: {name: t, key: ca.crt}}}",
        "{mode: sentinel, sentinel: {masterName: chat, addresses: ['rediss://s-0.s:26379']}, tls: {caSecretRef: {name: t, key: ca.crt}, clientCertSecretRef: {name: c, key: tls.crt}, clientKeySecretRef: {name: c, key: tls.key}}}",
    ] {
        let spec = redis(section);
        for version in [VERSION, OLD_VERSION] {
            assert_eq!(cel(&spec, version), Ok(()), "{version}: {spec}");
        }
        assert_eq!(operator(&spec), Ok(()), "operator: {spec}");
    }
}

#[test]
fn wrong_combinations_are_refused_by_cel_and_the_operator_in_the_same_words() {
    for (section, message) in [
        ("{keyPrefix: prod}", SINGLE_NEEDS_URL),
        (
            "{mode: single, passwordSecretRef: {name: r, key: pw}}",
            SINGLE_NEEDS_URL,
        ),
        ("{mode: cluster}", CLUSTER_NEEDS_SEEDS),
        (
            "{mode: cluster, nodes: [], passwordSecretRef: {name: r, key: pw}}",
            CLUSTER_NEEDS_SEEDS,
        ),
        ("{mode: sentinel}", SENTINEL_NEEDS_MASTER),
        (
            "{mode: sentinel, sentinel: {masterName: chat}}",
            SENTINEL_NEEDS_MASTER,
        ),
        (
            "{mode: sentinel, sentinel: {addresses: ['redis://s:26379']}}",
            SENTINEL_NEEDS_MASTER,
        ),
        (
            "{urlSecretRef: {name: r, key: url}, nodes: ['redis://a:1']}",
            NODES_ONLY_CLUSTER,
        ),
        (
            "{mode: cluster, nodes: ['redis://a:1'], sentinel: {masterName: m, addresses: ['redis://s:26379']}}",
            SENTINEL_ONLY_SENTINEL,
        ),
        (
            "{mode: sentinel, urlSecretRef: {name: r, key: url}, sentinel: {masterName: m, addresses: ['redis://s:26379']}}",
            NO_URL_WITH_SENTINEL,
        ),
        // Addresses land in the ConfigMap: no credentials, no database path.
        (
            "{mode: cluster, nodes: ['redis://:hunter2@a:6379']}",
            BAD_ADDRESS,
        ),
        ("{mode: cluster, nodes: ['a:6379']}", BAD_ADDRESS),
        ("{mode: cluster, nodes: ['redis://a:6379/3']}", BAD_ADDRESS),
        ("{mode: cluster, nodes: ['redis://']}", BAD_ADDRESS),
        (
            "{mode: sentinel, sentinel: {masterName: m, addresses: ['redis://s:26379', 'http://t:26379']}}",
            BAD_ADDRESS,
        ),
        // A client certificate needs its key and a key its certificate.
        (
            "{urlSecretRef: {name: r, key: url}, tls: {clientCertSecretRef: {name: c, key: tls.crt}}}",
            CLIENT_CERT_AND_KEY,
        ),
        (
            "{urlSecretRef: {name: r, key: url}, tls: {caSecretRef: {name: t, key: ca.crt}, clientKeySecretRef: {name: c, key: tls.key}}}",
            CLIENT_CERT_AND_KEY,
        ),
        // TLS settings for connections that are all plain text.
        (
            "{mode: cluster, nodes: ['redis://r-0.r:6379', 'redis://r-1.r:6379'], tls: {caSecretRef: {name: t, key: ca.crt}}}",
            TLS_NEEDS_REDISS,
        ),
        (
            "{mode: cluster, nodes: ['redis://r-0.r:6379'], urlSecretRef: {name: r, key: url}, tls: {caSecretRef: {name: t, key: ca.crt}}}",
            TLS_NEEDS_REDISS,
        ),
        (
            "{mode: sentinel, sentinel: {masterName: m, addresses: ['redis://s-0.s:26379', 'redis://s-1.s:26379']}, tls: {clientCertSecretRef: {name: c, key: tls.crt}, clientKeySecretRef: {name: c, key: tls.key}}}",
            TLS_NEEDS_REDISS,
        ),
    ] {
        let spec = redis(section);
        for version in [VERSION, OLD_VERSION] {
            let err = cel(&spec, version).expect_err(&spec);
            assert!(
                err.contains(&format!("message: {message:?}")),
                "{version}: {spec}: {err}"
            );
        }
        let err = operator(&spec).expect_err(&spec);
        assert_eq!(
            err.strip_prefix("invalid spec: "),
            Some(message),
            "operator: {spec}"
        );
    }
}

#[test]
fn the_mode_enum_is_the_gateways_and_the_key_prefix_pattern_its_rule() {
    let r = &schema(VERSION)["properties"]["spec"]["properties"]["gateway"]["properties"]["redis"]
        ["properties"];
    assert_eq!(
        r["mode"]["enum"],
        serde_json::json!(["single", "cluster", "sentinel"])
    );
    assert_eq!(r["mode"]["default"], "single");
    for mode in ["single", "cluster", "sentinel"] {
        let parsed: Result<chat_gateway_config::RedisMode, _> =
            serde_json::from_value(Value::String(mode.into()));
        assert!(parsed.is_ok(), "the gateway reads mode {mode}");
    }
    let prefix = jsonschema::validator_for(&r["keyPrefix"]).expect("schema");
    for text in ["chatgw", "team-a:prod", "a{b}", "a b", "{x", "x}"] {
        let gateway = chat_gateway_config::RedisConfig {
            key_prefix: text.into(),
            ..Default::default()
        }
        .validate()
        .is_ok();
        assert_eq!(
            prefix.is_valid(&Value::String(text.into())),
            gateway,
            "{text:?}"
        );
    }
}
