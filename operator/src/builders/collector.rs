//! The OpenTelemetry Collector sidecar: its ConfigMap and its container.
//!
//! The gateway exports OTLP/gRPC to the collector on localhost; the collector adds the
//! pod's Kubernetes attributes (downward API), batches, and exports to
//! `spec.telemetry.otlpEndpoint`. As a native sidecar it starts before the gateway and
//! stops after it, so spans emitted while the gateway drains still leave the pod.

use super::pod::field_env;
use super::Owner;
use crate::crd::{ChatGateway, CollectorSpec};
use crate::error::{Error, Result};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ResourceRequirements, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
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
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("50m".into())),
            ("memory".into(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity("256Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
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
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
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
mod pod_tests {
    //! The collector and user sidecars in the built children.
    use super::*;
    use crate::builders::testing::*;
    use crate::builders::{build, Children, CONFIG_HASH_ANNOTATION};
    use k8s_openapi::api::core::v1::PodSpec;

    fn children(spec: &str) -> Result<Children> {
        let cgw = cgw(spec);
        build(
            &cgw,
            &Owner::of(&cgw, "default").expect("owner"),
            &crate::builders::Inputs::default(),
        )
    }

    fn pod(c: &Children) -> &PodSpec {
        c.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn gateway_env(c: &Children, name: &str) -> Option<String> {
        pod(c).containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[test]
    fn collector_is_a_native_sidecar_and_the_gateway_exports_to_localhost() {
        let c = children(SIDECARS).expect("build");
        let pod = pod(&c);
        let init = pod.init_containers.as_ref().expect("init containers");
        // The collector first: it is up before the user's sidecars and the gateway.
        assert_eq!(init.len(), 2);
        let col = &init[0];
        assert_eq!(col.name, CONTAINER);
        assert_eq!(col.restart_policy.as_deref(), Some("Always"));
        assert_eq!(col.image.as_deref(), Some(DEFAULT_IMAGE));
        assert_eq!(
            col.args.as_ref().expect("args"),
            &["--config=/etc/otelcol/collector.yaml"]
        );
        let limits = col
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits");
        assert_eq!(limits.get("memory"), Some(&Quantity("128Mi".into())));
        let fields: Vec<_> = col
            .env
            .iter()
            .flatten()
            .filter_map(|e| {
                let f = e.value_from.as_ref()?.field_ref.as_ref()?;
                Some((e.name.as_str(), f.field_path.as_str()))
            })
            .collect();
        assert!(
            fields.contains(&("NODE_NAME", "spec.nodeName")),
            "{fields:?}"
        );
        assert!(fields.contains(&("POD_UID", "metadata.uid")), "{fields:?}");
        // Its config is mounted from its own ConfigMap.
        let vol = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == VOLUME)
            .expect("collector volume");
        assert_eq!(
            vol.config_map.as_ref().map(|c| c.name.as_str()),
            Some("chat-otel-collector")
        );
        assert_eq!(
            col.volume_mounts.as_ref().expect("mounts")[0].mount_path,
            CONFIG_DIR
        );
        // The gateway stays the first container and exports to the collector.
        assert_eq!(pod.containers[0].name, "gateway");
        assert_eq!(
            gateway_env(&c, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some(LOCAL_ENDPOINT)
        );
        let ann = c
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .expect("annotations");
        assert!(ann.contains_key(HASH_ANNOTATION));
        assert!(ann.contains_key(CONFIG_HASH_ANNOTATION));
    }

    #[test]
    fn collector_config_map_has_the_expected_pipeline() {
        let c = children(SIDECARS).expect("build");
        let cm = c
            .collector_config_map
            .as_ref()
            .expect("collector ConfigMap");
        assert_eq!(cm.metadata.name.as_deref(), Some("chat-otel-collector"));
        assert_eq!(
            cm.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/managed-by")),
            Some(&"chatgateway-operator".to_string())
        );
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .expect("collector.yaml");
        let y: serde_json::Value = crate::yaml::from_str(text).expect("valid YAML");
        let protocols = &y["receivers"]["otlp"]["protocols"];
        assert_eq!(
            protocols["grpc"]["endpoint"].as_str(),
            Some("localhost:4317")
        );
        assert_eq!(
            protocols["http"]["endpoint"].as_str(),
            Some("localhost:4318")
        );
        let traces = &y["service"]["pipelines"]["traces"];
        let names = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        };
        assert_eq!(names(&traces["receivers"]), ["otlp"]);
        assert_eq!(names(&traces["processors"]), ["resource", "batch"]);
        assert_eq!(names(&traces["exporters"]), ["otlp"]);
        assert!(y["processors"]["batch"].is_object());
        let attrs: Vec<(String, String)> = y["processors"]["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["key"].as_str().unwrap_or("").to_string(),
                    a["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        for (key, env) in [
            ("k8s.pod.name", "POD_NAME"),
            ("k8s.namespace.name", "POD_NAMESPACE"),
            ("k8s.pod.uid", "POD_UID"),
            ("k8s.node.name", "NODE_NAME"),
        ] {
            assert!(
                attrs.contains(&(key.to_string(), format!("${{env:{env}}}"))),
                "{key}: {attrs:?}"
            );
        }
        let exporter = &y["exporters"]["otlp"];
        assert_eq!(
            exporter["endpoint"].as_str(),
            Some("jaeger-collector.observability:4317")
        );
        assert_eq!(exporter["tls"]["insecure"].as_bool(), Some(true));
    }

    #[test]
    fn user_sidecars_are_added_unchanged_but_for_the_restart_policy() {
        let cgw = cgw(SIDECARS);
        let c = children(SIDECARS).expect("build");
        let mut native = pod(&c).init_containers.as_ref().expect("init")[1].clone();
        assert_eq!(native.restart_policy.take().as_deref(), Some("Always"));
        assert_eq!(native, cgw.spec.sidecars[0]);
        let plain = format!("{SIDECARS}\nnativeSidecars: false");
        let c = children(&plain).expect("build");
        let containers = &pod(&c).containers;
        let names: Vec<_> = containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["gateway", "bot"]);
        assert_eq!(containers[1], cgw.spec.sidecars[0]);
        let bot = &containers[1];
        assert_eq!(bot.ports.as_ref().expect("ports")[0].container_port, 9000);
        assert!(bot.readiness_probe.is_some());
        assert!(bot.resources.is_some());
    }

    #[test]
    fn sidecar_name_clash_is_an_invalid_spec() {
        for (name, want) in [
            ("gateway", "clashes with the operator's own container"),
            (
                "otel-collector",
                "clashes with the operator's own container",
            ),
        ] {
            let spec = format!(
                "gateway: {{auth: {{mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}}}\nsidecars: [{{name: {name}, image: x}}]"
            );
            let err = children(&spec).unwrap_err();
            assert!(
                matches!(err, Error::InvalidSpec(ref m) if m.contains(want)),
                "{name}: {err}"
            );
        }
        let err = children(
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nsidecars: [{name: a, image: x}, {name: a, image: y}]",
        )
        .unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
    }

    #[test]
    fn disabling_the_collector_removes_it_and_its_config_map() {
        let off = SIDECARS.replace("enabled: true", "enabled: false");
        let c = children(&off).expect("build");
        assert!(c.collector_config_map.is_none());
        let pod = pod(&c);
        assert!(pod
            .init_containers
            .iter()
            .flatten()
            .all(|c| c.name != CONTAINER));
        assert!(pod.containers.iter().all(|c| c.name != CONTAINER));
        assert!(pod.volumes.iter().flatten().all(|v| v.name != VOLUME));
        assert_eq!(
            gateway_env(&c, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some("http://jaeger-collector.observability:4317"),
            "without the collector the gateway exports directly"
        );
        let yaml = c.to_yaml().expect("yaml");
        assert!(!yaml.contains("otel-collector"), "{yaml}");
    }

    #[test]
    fn opt_out_of_native_sidecars_renders_a_plain_container() {
        let spec = SIDECARS.replace(
            "enabled: true",
            "enabled: true\n    nativeSidecar: false\n    image: registry.example/otelcol:1",
        );
        let c = children(&format!("{spec}\nnativeSidecars: false")).expect("build");
        let pod = pod(&c);
        assert_eq!(pod.init_containers, None);
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["gateway", CONTAINER, "bot"]);
        let col = &pod.containers[1];
        assert_eq!(col.restart_policy, None);
        assert_eq!(col.image.as_deref(), Some("registry.example/otelcol:1"));
        assert!(c.collector_config_map.is_some());
    }

    #[test]
    fn collector_without_an_endpoint_is_an_invalid_spec() {
        let err =
            children("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ntelemetry: {collector: {enabled: true}}")
                .unwrap_err();
        assert!(
            matches!(err, Error::InvalidSpec(ref m) if m.contains("otlpEndpoint")),
            "{err}"
        );
    }

    #[test]
    fn render_lists_the_collector_config_map_after_the_gateway_config() {
        let yaml = children(SIDECARS).expect("build").to_yaml().expect("yaml");
        let names: Vec<String> = yaml
            .split("---\n")
            .map(|d| {
                let v: serde_json::Value = crate::yaml::from_str(d).expect("doc");
                format!(
                    "{}/{}",
                    v["kind"].as_str().unwrap_or(""),
                    v["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            names[..3],
            [
                "ConfigMap/chat-config",
                "ConfigMap/chat-otel-collector",
                "Deployment/chat"
            ]
        );
    }
}
