//! `gateway.redis.tls` on the builder side: one projected volume with each referenced
//! Secret key under its fixed file name, mounted read-only into the gateway container, and
//! the ConfigMap's `redis.tls` naming those files.

use super::tests::{children, config_yaml};
use super::*;
use crate::builders::pod::{CONTAINER, GATEWAY_GROUP};
use crate::builders::testing::pod_spec;
use crate::builders::Children;
use chat_gateway_config::Config;
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const URL: &str = "urlSecretRef: {name: redis, key: url}";
/// The CA from one Secret, the client certificate and key from another.
const MUTUAL: &str = "tls: {caSecretRef: {name: redis-tls, key: ca.crt}, clientCertSecretRef: {name: redis-client, key: tls.crt}, clientKeySecretRef: {name: redis-client, key: tls.key}}";

fn pod(c: &Children) -> &PodSpec {
    pod_spec(&c.deployment)
}

/// The `redis-tls` volume and the gateway container's mount of it, as JSON.
fn tls_volume_and_mount(c: &Children) -> Option<(Value, Value)> {
    let pod = pod(c);
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == TLS_VOLUME)?;
    let gateway = pod.containers.iter().find(|c| c.name == CONTAINER)?;
    let mount = gateway
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == TLS_VOLUME)
        .expect("a volume without its mount");
    Some((
        serde_json::to_value(volume).expect("json"),
        serde_json::to_value(mount).expect("json"),
    ))
}

/// The ConfigMap's config.yaml as a tree.
fn config(c: &Children) -> Value {
    crate::yaml::from_str(config_yaml(c)).expect("yaml")
}

#[test]
fn each_secret_key_is_a_fixed_file_in_one_read_only_projected_volume() {
    let c = children(&format!("{{{URL}, {MUTUAL}}}"));
    let (volume, mount) = tls_volume_and_mount(&c).expect("redis-tls volume");
    let file = |secret: &str, key: &str, path: &str| {
        json!({"secret": {"name": secret, "optional": false,
            "items": [{"key": key, "path": path, "mode": 0o440}]}})
    };
    assert_eq!(
        volume,
        json!({"name": "redis-tls", "projected": {"defaultMode": 0o440, "sources": [
            file("redis-tls", "ca.crt", "ca.crt"),
            file("redis-client", "tls.crt", "tls.crt"),
            file("redis-client", "tls.key", "tls.key"),
        ]}})
    );
    // A whole-volume mount (no subPath: the kubelet keeps the files current), outside the
    // read-only ConfigMap mount at /etc/chatgateway.
    assert_eq!(
        mount,
        json!({"name": "redis-tls", "mountPath": "/var/run/secrets/chatgateway/redis-tls",
            "readOnly": true})
    );
    // Mode 0440 files are the kubelet's (root's): the non-root gateway reads them through
    // the pod's fsGroup, its own group.
    let security = pod(&c).security_context.as_ref().expect("pod security");
    assert_eq!(security.fs_group, Some(GATEWAY_GROUP));
    assert_eq!(security.run_as_non_root, Some(true));
}

#[test]
fn the_config_names_the_mounted_files() {
    let c = children(&format!("{{{URL}, {MUTUAL}}}"));
    assert_eq!(
        config(&c)["redis"]["tls"],
        json!({
            "caFile": "/var/run/secrets/chatgateway/redis-tls/ca.crt",
            "certFile": "/var/run/secrets/chatgateway/redis-tls/tls.crt",
            "keyFile": "/var/run/secrets/chatgateway/redis-tls/tls.key",
        })
    );
    // The config names exactly the files of the mounted volume.
    let (volume, mount) = tls_volume_and_mount(&c).expect("volume");
    let dir = mount["mountPath"].as_str().expect("path");
    let mounted: BTreeSet<String> = volume["projected"]["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .filter_map(|s| s["secret"]["items"][0]["path"].as_str())
        .map(|file| format!("{dir}/{file}"))
        .collect();
    let named: BTreeSet<String> = config(&c)["redis"]["tls"]
        .as_object()
        .expect("tls")
        .values()
        .filter_map(|p| p.as_str().map(String::from))
        .collect();
    assert_eq!(named, mounted);
}

#[test]
fn a_ca_alone_mounts_one_file_and_sets_only_ca_file() {
    let c = children(
        "{mode: cluster, nodes: ['rediss://r-0.r:6379'], tls: {caSecretRef: {name: ca, key: root.pem}}}",
    );
    let (volume, _) = tls_volume_and_mount(&c).expect("volume");
    let sources = volume["projected"]["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 1);
    assert_eq!(
        sources[0]["secret"]["items"][0],
        json!({"key": "root.pem", "path": "ca.crt", "mode": 0o440}),
        "the Secret's key, under the fixed name"
    );
    assert_eq!(
        config(&c)["redis"]["tls"],
        json!({"caFile": "/var/run/secrets/chatgateway/redis-tls/ca.crt"})
    );
}

#[test]
fn without_tls_files_there_is_no_volume_and_no_tls_section() {
    for redis in [format!("{{{URL}}}"), format!("{{{URL}, tls: {{}}}}")] {
        let c = children(&redis);
        assert!(tls_volume_and_mount(&c).is_none(), "{redis}");
        assert_eq!(config(&c)["redis"].get("tls"), None, "{redis}");
    }
}

#[test]
fn the_tls_section_is_the_only_addition_to_the_gateways_config() {
    let plain = children(&format!("{{{URL}}}"));
    let tls = children(&format!("{{{URL}, {MUTUAL}}}"));
    let mut with_tls = config(&tls);
    let removed = with_tls["redis"]
        .as_object_mut()
        .and_then(|r| r.remove("tls"));
    assert!(removed.is_some());
    assert_eq!(with_tls, config(&plain));
    // What is left is still the gateway's own config, read by its loader.
    let text = crate::yaml::to_string(&with_tls).expect("yaml");
    Config::from_yaml(&text).expect("the gateway parses the rest");
}

#[test]
fn the_gateway_loads_the_tls_files_the_operator_writes() {
    let c = children(&format!("{{{URL}, {MUTUAL}}}"));
    let loaded = super::tests::gateway_loads(&c, &[("redis/url", "rediss://redis.chat:6379")]);
    let file = |name: &str| Some(std::path::PathBuf::from(format!("{TLS_DIR}/{name}")));
    assert_eq!(loaded.redis.tls.ca_file, file(TLS_CA));
    assert_eq!(loaded.redis.tls.cert_file, file(TLS_CERT));
    assert_eq!(loaded.redis.tls.key_file, file(TLS_KEY));
}
