//! Each Redis mode end to end on the builder side: the ConfigMap and the pod's environment
//! the operator writes, read back by the gateway's own loader the way a pod reads them.

use super::*;
use crate::builders::configmap::CONFIG_KEY;
use crate::builders::testing::{cgw, pod_spec};
use crate::builders::{build, Children, Inputs, Owner};
use crate::error::Error;
use chat_gateway_config::{Config, EngineKind, RedisMode};
use std::collections::BTreeMap;

const AUTH: &str = "auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}";

pub(super) fn children(redis: &str) -> Children {
    let c = cgw(&format!("gateway: {{{AUTH}, redis: {redis}}}"));
    build(
        &c,
        &Owner::of(&c, "apps").expect("owner"),
        &Inputs::default(),
    )
    .expect("build")
}

pub(super) fn config_yaml(c: &Children) -> &str {
    c.config_map
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .expect("config.yaml")
}

/// The gateway container's variables that come from Secrets: name -> `secret/key`.
fn secret_env(c: &Children) -> BTreeMap<String, String> {
    let pod = pod_spec(&c.deployment);
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let s = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            assert_eq!(s.optional, Some(false), "{}", e.name);
            Some((e.name.clone(), format!("{}/{}", s.name, s.key)))
        })
        .collect()
}

/// What a gateway pod loads: the ConfigMap's file, then its environment with each Secret
/// key replaced by `values[secret/key]`.
pub(super) fn gateway_loads(c: &Children, values: &[(&str, &str)]) -> Config {
    let dir = std::env::temp_dir().join(format!(
        "chatgw-op-redis-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("config.yaml");
    std::fs::write(&file, config_yaml(c)).expect("write");
    let values: BTreeMap<_, _> = values.iter().copied().collect();
    let env = secret_env(c).into_iter().map(|(var, secret)| {
        let value = values
            .get(secret.as_str())
            .unwrap_or_else(|| panic!("{secret}"));
        (var, value.to_string())
    });
    let loaded = Config::load(Some(&file), env);
    let _ = std::fs::remove_dir_all(&dir);
    loaded.expect("the gateway loads what the operator writes")
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn single_mode_url_and_password_come_from_secrets_only() {
    let c = children(
        "{urlSecretRef: {name: redis, key: url}, passwordSecretRef: {name: redis, key: password}}",
    );
    assert_eq!(
        secret_env(&c),
        env(&[
            ("CHATGW_REDIS__URL", "redis/url"),
            ("CHATGW_REDIS__PASSWORD", "redis/password"),
        ])
    );
    let loaded = gateway_loads(
        &c,
        &[
            ("redis/url", "rediss://redis.apps:6380/2"),
            ("redis/password", "0123"),
        ],
    );
    assert_eq!(loaded.engine, EngineKind::Redis);
    assert_eq!(loaded.redis.mode, RedisMode::Single);
    assert_eq!(loaded.redis.url, "rediss://redis.apps:6380/2");
    assert_eq!(loaded.redis.password.as_deref(), Some("0123"), "verbatim");
    let yaml = config_yaml(&c);
    assert!(yaml.contains("mode: single"), "{yaml}");
    assert!(!yaml.contains("password"), "{yaml}");
}

#[test]
fn cluster_mode_writes_the_seeds_and_takes_credentials_from_secrets() {
    let c = children(
        "{mode: cluster, nodes: ['redis://r-0.r:6379', 'redis://r-1.r:6379'], usernameSecretRef: {name: acl, key: user}, passwordSecretRef: {name: acl, key: pw}, keyPrefix: prod}",
    );
    assert_eq!(
        secret_env(&c),
        env(&[
            ("CHATGW_REDIS__USERNAME", "acl/user"),
            ("CHATGW_REDIS__PASSWORD", "acl/pw"),
        ]),
        "no URL: the seeds are in the ConfigMap"
    );
    let loaded = gateway_loads(&c, &[("acl/user", "chat"), ("acl/pw", "true")]);
    assert_eq!(loaded.redis.mode, RedisMode::Cluster);
    assert_eq!(
        loaded.redis.seeds(),
        ["redis://r-0.r:6379", "redis://r-1.r:6379"]
    );
    assert_eq!(loaded.redis.username.as_deref(), Some("chat"));
    assert_eq!(loaded.redis.password.as_deref(), Some("true"));
    assert_eq!(loaded.redis.key_prefix, "prod");

    // The URL Secret as the one seed.
    let c = children("{mode: cluster, urlSecretRef: {name: redis, key: url}}");
    assert_eq!(secret_env(&c), env(&[("CHATGW_REDIS__URL", "redis/url")]));
    let loaded = gateway_loads(&c, &[("redis/url", "rediss://:pw@cluster.apps:6379")]);
    assert_eq!(loaded.redis.seeds(), ["rediss://:pw@cluster.apps:6379"]);
}

#[test]
fn sentinel_mode_writes_the_master_and_sentinels_and_both_passwords_from_secrets() {
    let c = children(
        "{mode: sentinel, sentinel: {masterName: chat, addresses: ['redis://s-0.s:26379', 'redis://s-1.s:26379'], usernameSecretRef: {name: sen, key: user}, passwordSecretRef: {name: sen, key: pw}}, passwordSecretRef: {name: redis, key: pw}, readinessGrace: 10s}",
    );
    assert_eq!(
        secret_env(&c),
        env(&[
            ("CHATGW_REDIS__PASSWORD", "redis/pw"),
            ("CHATGW_REDIS__SENTINEL__USERNAME", "sen/user"),
            ("CHATGW_REDIS__SENTINEL__PASSWORD", "sen/pw"),
        ])
    );
    let loaded = gateway_loads(
        &c,
        &[
            ("redis/pw", "r"),
            ("sen/user", "watcher"),
            ("sen/pw", "0x10"),
        ],
    );
    let r = &loaded.redis;
    assert_eq!(r.mode, RedisMode::Sentinel);
    assert_eq!(r.sentinel.master_name, "chat");
    assert_eq!(
        r.sentinel.addresses,
        ["redis://s-0.s:26379", "redis://s-1.s:26379"]
    );
    assert_eq!(r.password.as_deref(), Some("r"));
    assert_eq!(r.sentinel.username.as_deref(), Some("watcher"));
    assert_eq!(r.sentinel.password.as_deref(), Some("0x10"));
    assert_eq!(r.readiness_grace, std::time::Duration::from_secs(10));
    assert!(!config_yaml(&c).contains("0x10"));
}

#[test]
fn every_secret_variable_is_one_the_gateway_takes_verbatim() {
    // A password `0123` read as YAML would reach Redis as `123`.
    let spec: crate::crd::RedisSpec = crate::yaml::from_str(
        "{mode: sentinel, urlSecretRef: {name: a, key: a}, usernameSecretRef: {name: b, key: b}, passwordSecretRef: {name: c, key: c}, sentinel: {usernameSecretRef: {name: d, key: d}, passwordSecretRef: {name: e, key: e}}}",
    )
    .expect("spec");
    let vars = redis_env(&spec);
    assert_eq!(vars.len(), 5, "{vars:?}");
    for (var, _) in vars {
        let path: Vec<String> = var
            .strip_prefix(chat_gateway_config::ENV_PREFIX)
            .expect("prefix")
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        assert!(
            chat_gateway_config::VERBATIM_ENV_PATHS
                .iter()
                .any(|p| p.iter().copied().eq(path.iter().map(String::as_str))),
            "{var}"
        );
    }
}

#[test]
fn gateway_config_cannot_set_what_gateway_redis_owns() {
    for (config, want) in [
        ("{redis: {mode: cluster}}", "redis.mode"),
        ("{redis: {nodes: ['redis://a:1']}}", "redis.nodes"),
        (
            "{redis: {sentinel: {masterName: m}}}",
            "redis.sentinel is set by the operator",
        ),
        ("{redis: {username: u}}", "usernameSecretRef"),
        (
            "{redis: {password: hunter2}}",
            "a password belongs in a Secret",
        ),
        (
            "{redis: {tls: {caFile: /etc/ssl/ca.pem}}}",
            "gateway.config.redis.tls is set by the operator: use gateway.redis.tls",
        ),
    ] {
        let c = cgw(&format!(
            "gateway: {{{AUTH}, redis: {{urlSecretRef: {{name: r, key: u}}}}, config: {config}}}"
        ));
        let err = build(
            &c,
            &Owner::of(&c, "apps").expect("owner"),
            &Inputs::default(),
        )
        .expect_err(config);
        assert!(
            matches!(err, Error::InvalidSpec(ref m) if m.contains(want)),
            "{config}: {err}"
        );
    }
}
