//! The collector and user sidecars in the built children.

use super::*;
use crate::builders::testing::*;
use crate::builders::{build, Children, CONFIG_HASH_ANNOTATION};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn children(spec: &str) -> Result<Children> {
    let cgw = cgw(spec);
    build(
        &cgw,
        &Owner::of(&cgw, "default").expect("owner"),
        &crate::builders::Inputs::default(),
    )
}

fn pod(c: &Children) -> &PodSpec {
    pod_spec(&c.deployment)
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
fn a_sidecar_port_the_gateway_or_collector_listens_on_is_an_invalid_spec() {
    let with = |extra: &str, port: u16| {
        format!(
            "gateway: {{auth: {{mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}{extra}}}\nsidecars: [{{name: bot, image: x, ports: [{{containerPort: {port}}}]}}]\ntelemetry: {{otlpEndpoint: 'http://c:4317', collector: {{enabled: true}}}}"
        )
    };
    let api = ", api: {port: 9091, keysSecretRef: {name: k, key: keys}}";
    for (spec, whose) in [
        (with("", 8080), "the gateway's"),
        (with(api, 9091), "the gateway's"),
        (with("", 4317), "the collector's"),
        (with("", 4318), "the collector's"),
    ] {
        let err = children(&spec).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSpec(ref m) if m.contains(whose) && m.contains("sidecars[0]")),
            "{spec}: {err}"
        );
    }
    assert!(children(&with("", 9000)).is_ok(), "a port of its own");
    assert!(
        children(&with("", 9091)).is_ok(),
        "the API's port with the API off"
    );
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
    let children = children(SIDECARS).expect("build");
    let yaml = children.to_yaml().expect("yaml");
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
            format!(
                "ConfigMap/{}",
                children
                    .config_map
                    .metadata
                    .name
                    .clone()
                    .unwrap_or_default()
            )
            .as_str(),
            "ConfigMap/chat-otel-collector",
            "Deployment/chat"
        ]
    );
}
