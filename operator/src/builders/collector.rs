//! The OpenTelemetry Collector sidecar: its ConfigMap and its container.
//!
//! The gateway exports OTLP/gRPC to the collector on localhost; the collector adds the
//! pod's Kubernetes attributes (downward API), batches, and exports to
//! `spec.telemetry.otlpEndpoint`. As a native sidecar it starts before the gateway and
//! stops after it, so spans emitted while the gateway drains still leave the pod.

use super::pod::{field_env, requests_and_memory_limit, restricted};
use super::Owner;
use crate::crd::{ChatGateway, CollectorSpec};
use crate::error::{Error, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Container, ResourceRequirements, VolumeMount};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Collector image when the spec names none (the core distribution, pinned).
pub const DEFAULT_IMAGE: &str = "otel/opentelemetry-collector:0.161.0";
/// Name of the collector container.
pub const CONTAINER: &str = "otel-collector";
/// Key of the collector config in its ConfigMap.
pub const CONFIG_KEY: &str = "collector.yaml";
/// Directory the collector ConfigMap is mounted at.
pub const CONFIG_DIR: &str = "/etc/otelcol";
/// Name of the pod volume holding the collector config.
pub const VOLUME: &str = "otel-collector-config";
/// The ports the collector listens on in the pod (OTLP/gRPC, OTLP/HTTP): no other
/// container of the pod may take them.
pub const PORTS: [i32; 2] = [4317, 4318];
/// OTLP/gRPC receiver address inside the pod.
pub const GRPC_ENDPOINT: &str = "localhost:4317";
/// OTLP/HTTP receiver address inside the pod.
pub const HTTP_ENDPOINT: &str = "localhost:4318";
/// What the gateway's `OTEL_EXPORTER_OTLP_ENDPOINT` is when the collector runs.
pub const LOCAL_ENDPOINT: &str = "http://localhost:4317";
/// Pod template annotation carrying the collector config hash (a change rolls the pods).
pub const HASH_ANNOTATION: &str = "chatgateway.io/collector-config-hash";

/// The collector section when it is enabled.
pub fn enabled(cgw: &ChatGateway) -> Option<&CollectorSpec> {
    cgw.spec
        .telemetry
        .as_ref()
        .and_then(|t| t.collector.as_ref())
        .filter(|c| c.enabled)
}

/// Splits `http(s)://host[:port][/path]` into the collector exporter's `host:port` and
/// whether TLS is off.
fn exporter_target(endpoint: &str) -> Result<(String, bool)> {
    let (insecure, rest) = if let Some(rest) = endpoint.strip_prefix("http://") {
        (true, rest)
    } else if let Some(rest) = endpoint.strip_prefix("https://") {
        (false, rest)
    } else {
        return Err(Error::InvalidSpec(format!(
            "telemetry.otlpEndpoint: {endpoint:?} must start with http:// or https://"
        )));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "telemetry.otlpEndpoint: {endpoint:?} names no host"
        )));
    }
    // A bracketed IPv6 address without a port ends in `]`.
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let target = if has_port {
        host.to_string()
    } else {
        format!("{host}:{}", if insecure { 4317 } else { 443 })
    };
    Ok((target, insecure))
}

/// The collector's config file for an export to `otlp_endpoint`.
pub fn config_yaml(otlp_endpoint: &str) -> Result<String> {
    let (target, insecure) = exporter_target(otlp_endpoint)?;
    let attribute = |key: &str, env: &str| serde_json::json!({"key": key, "value": format!("${{env:{env}}}"), "action": "upsert"});
    let config = serde_json::json!({
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": GRPC_ENDPOINT},
            "http": {"endpoint": HTTP_ENDPOINT},
        }}},
        "processors": {
            // Pod identity from the downward API (the container's env, see `container`).
            "resource": {"attributes": [
                attribute("k8s.pod.name", "POD_NAME"),
                attribute("k8s.namespace.name", "POD_NAMESPACE"),
                attribute("k8s.pod.uid", "POD_UID"),
                attribute("k8s.node.name", "NODE_NAME"),
            ]},
            "batch": {"timeout": "1s", "send_batch_size": 512},
        },
        // `otlp` (gRPC) is still accepted by current collectors (0.144+ also call it
        // `otlp_grpc` and warn about the old name); it keeps older pinned images working.
        "exporters": {"otlp": {
            "endpoint": target,
            "tls": {"insecure": insecure},
        }},
        "service": {"pipelines": {"traces": {
            "receivers": ["otlp"],
            "processors": ["resource", "batch"],
            "exporters": ["otlp"],
        }}},
    });
    crate::yaml::to_string(&config).map_err(Error::Serialize)
}

/// The collector ConfigMap and the hash of its content; `None` when the collector is off.
pub fn build_config_map(cgw: &ChatGateway, owner: &Owner) -> Result<Option<(ConfigMap, String)>> {
    if enabled(cgw).is_none() {
        return Ok(None);
    }
    let endpoint = cgw
        .spec
        .telemetry
        .as_ref()
        .and_then(|t| t.otlp_endpoint.as_deref())
        .ok_or_else(|| {
            Error::InvalidSpec(
                "telemetry.collector needs telemetry.otlpEndpoint (where the collector exports to)"
                    .into(),
            )
        })?;
    let yaml = config_yaml(endpoint)?;
    let hash = format!("{:x}", Sha256::digest(yaml.as_bytes()));
    let cm = ConfigMap {
        metadata: owner.meta(&owner.collector_config_map_name()),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    };
    Ok(Some((cm, hash[..16].to_string())))
}

fn default_resources() -> ResourceRequirements {
    requests_and_memory_limit("50m", "64Mi", "256Mi")
}

/// Whether the collector runs as a native sidecar (an init container with
/// `restartPolicy: Always`) rather than a plain container.
pub fn native(spec: &CollectorSpec) -> bool {
    spec.native_sidecar.unwrap_or(true)
}

/// The collector container (with `restartPolicy: Always` when it is a native sidecar).
pub fn container(spec: &CollectorSpec) -> Container {
    Container {
        name: CONTAINER.into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
        ),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(vec![format!("--config={CONFIG_DIR}/{CONFIG_KEY}")]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_UID", "metadata.uid"),
            field_env("NODE_NAME", "spec.nodeName"),
        ]),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        restart_policy: native(spec).then(|| "Always".to_string()),
        volume_mounts: Some(vec![VolumeMount {
            name: VOLUME.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporter_target_strips_the_scheme_and_defaults_the_port() {
        assert_eq!(
            exporter_target("http://jaeger.obs:4317").expect("ok"),
            ("jaeger.obs:4317".to_string(), true)
        );
        assert_eq!(
            exporter_target("https://otlp.example/v1").expect("ok"),
            ("otlp.example:443".to_string(), false)
        );
        assert_eq!(
            exporter_target("http://collector").expect("ok"),
            ("collector:4317".to_string(), true)
        );
        assert!(exporter_target("collector:4317").is_err());
        assert!(exporter_target("http:///x").is_err());
    }
}

#[cfg(test)]
#[path = "collector_tests.rs"]
mod pod_tests;
