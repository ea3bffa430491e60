//! The Deployment and its pod template.

use super::*;
use crate::builders::configmap;
use crate::builders::testing::*;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

const HASHES: Hashes<'static> = Hashes {
    config: "abc123",
    collector: None,
    secrets: None,
};

fn deployment_with(spec: &str, hashes: &Hashes<'_>, inputs: &Inputs) -> Deployment {
    let cgw = cgw(spec);
    build(
        &cgw,
        &Owner::of(&cgw, "default").expect("owner"),
        hashes,
        inputs,
    )
    .expect("build")
}

fn deployment(spec: &str) -> Deployment {
    deployment_with(spec, &HASHES, &Inputs::default())
}

fn pod(d: &Deployment) -> &PodSpec {
    pod_spec(d)
}

fn env_of<'a>(d: &'a Deployment, name: &str) -> Option<&'a EnvVar> {
    pod(d).containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
}

fn annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(key).cloned())
}

const REDIS: &str = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {urlSecretRef: {name: r, key: url}}}";

#[test]
fn defaults_probes_replicas_image_and_grace_period() {
    let d = deployment(MINIMAL);
    let spec = d.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(1), "the memory engine runs one pod");
    assert_eq!(deployment(REDIS).spec.and_then(|s| s.replicas), Some(2));
    let c = &pod(&d).containers[0];
    assert_eq!(c.image.as_deref(), Some(DEFAULT_IMAGE));
    assert_eq!(
        c.args.as_ref().expect("args"),
        &["--config", "/etc/chatgateway/config.yaml"]
    );
    let path = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    let port = &c.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), 8080)
    );
    assert_eq!(
        pod(&d).termination_grace_period_seconds,
        Some(60 + DRAIN_MARGIN_SECONDS)
    );
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .expect("rolling update");
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(ru.max_surge, Some(IntOrString::String("100%".into())));
    assert_eq!(
        spec.min_ready_seconds,
        Some(rollout::DEFAULT_MIN_READY_SECONDS)
    );
    assert_eq!(
        annotation(&d, CONFIG_HASH_ANNOTATION).as_deref(),
        Some("abc123")
    );
    assert_eq!(annotation(&d, SECRET_HASH_ANNOTATION), None);
}

#[test]
fn the_operator_default_image_applies_when_the_spec_names_none() {
    let inputs = Inputs {
        default_image: Some("registry.local/gw:7".into()),
        ..Inputs::default()
    };
    let d = deployment_with(MINIMAL, &HASHES, &inputs);
    assert_eq!(
        pod(&d).containers[0].image.as_deref(),
        Some("registry.local/gw:7")
    );
    let d = deployment_with(FULL, &HASHES, &inputs);
    assert_eq!(
        pod(&d).containers[0].image.as_deref(),
        Some("registry.example/chat-gateway:1.2.3")
    );
}

#[test]
fn no_service_links_and_no_token_unless_asked() {
    let d = deployment(MINIMAL);
    assert_eq!(pod(&d).enable_service_links, Some(false));
    assert_eq!(pod(&d).automount_service_account_token, Some(false));
    let d = deployment("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nautomountServiceAccountToken: true");
    assert_eq!(pod(&d).automount_service_account_token, Some(true));
    assert_eq!(pod(&d).enable_service_links, Some(false));
}

#[test]
fn replicas_follow_the_spec_then_the_live_count_and_leave_the_hpa_alone() {
    let fixed = cgw(&format!("{REDIS}\nreplicas: 4"));
    assert_eq!(replicas(&fixed, None), Some(4));
    assert_eq!(replicas(&fixed, Some(9)), Some(4));
    // Autoscaling turned off without replicas: keep what the HPA had.
    let off = cgw(&format!("{REDIS}\nautoscaling: {{enabled: false}}"));
    assert_eq!(replicas(&off, Some(30)), Some(30));
    assert_eq!(replicas(&off, None), Some(2));
    // Autoscaling on: minReplicas for a new Deployment, then never again.
    let on = cgw(&format!(
        "{REDIS}\nautoscaling: {{enabled: true, minReplicas: 3}}"
    ));
    assert_eq!(replicas(&on, None), Some(3));
    assert_eq!(replicas(&on, Some(7)), None);
    let d = deployment_with(
        &format!("{REDIS}\nautoscaling: {{enabled: true, minReplicas: 3}}"),
        &HASHES,
        &Inputs {
            live_replicas: Some(7),
            ..Inputs::default()
        },
    );
    let json = serde_json::to_value(&d).expect("json");
    assert!(json["spec"].get("replicas").is_none(), "{}", json["spec"]);
}

#[test]
fn hashes_go_on_the_template_and_the_template_hash_on_the_deployment() {
    let hashes = Hashes {
        config: "c",
        collector: Some("o"),
        secrets: Some("s1"),
    };
    let d = deployment_with(MINIMAL, &hashes, &Inputs::default());
    assert_eq!(
        annotation(&d, SECRET_HASH_ANNOTATION).as_deref(),
        Some("s1")
    );
    assert_eq!(
        annotation(&d, collector::HASH_ANNOTATION).as_deref(),
        Some("o")
    );
    let template_hash = |d: &Deployment| {
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION).cloned())
            .expect("template hash")
    };
    let rotated = deployment_with(
        MINIMAL,
        &Hashes {
            secrets: Some("s2"),
            ..hashes
        },
        &Inputs::default(),
    );
    assert_ne!(template_hash(&d), template_hash(&rotated));
    // Replicas are not in the template: scaling is not a rollout.
    let scaled = deployment_with(
        MINIMAL,
        &hashes,
        &Inputs {
            live_replicas: Some(1),
            ..Inputs::default()
        },
    );
    assert_eq!(template_hash(&d), template_hash(&scaled));
}

#[test]
fn grace_period_is_drain_timeout_plus_margin() {
    let d = deployment("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndrain: {timeout: 2m}");
    assert_eq!(
        pod(&d).termination_grace_period_seconds,
        Some(120 + DRAIN_MARGIN_SECONDS)
    );
    let cgw = cgw("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndrain: {timeout: later}");
    let err = build(
        &cgw,
        &Owner::of(&cgw, "default").expect("owner"),
        &HASHES,
        &Inputs::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("drain.timeout"), "{err}");
}

#[test]
fn topology_spread_by_zone_and_node_unless_overridden() {
    let d = deployment(MINIMAL);
    let keys: Vec<_> = pod(&d)
        .topology_spread_constraints
        .iter()
        .flatten()
        .map(|t| t.topology_key.as_str())
        .collect();
    assert_eq!(
        keys,
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    let d =
        deployment("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nplacement: {topologySpreadConstraints: []}");
    assert_eq!(pod(&d).topology_spread_constraints, None);
}

#[test]
fn downward_api_secrets_telemetry_and_user_env() {
    let d = deployment(FULL);
    let field = |n| {
        env_of(&d, n)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    let redis = env_of(&d, "CHATGW_REDIS__URL")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("redis url from secret");
    assert_eq!((redis.name.as_str(), redis.key.as_str()), ("redis", "url"));
    let value = |n| env_of(&d, n).and_then(|e| e.value.clone());
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://otel-collector.observability:4317")
    );
    assert_eq!(
        value("OTEL_TRACES_SAMPLER").as_deref(),
        Some("parentbased_traceidratio")
    );
    assert_eq!(value("OTEL_TRACES_SAMPLER_ARG").as_deref(), Some("0.25"));
    assert!(
        value("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("k8s.pod.name=$(POD_NAME)"))
    );
    // The spec's own env comes last, envFrom passes through.
    let names: Vec<_> = pod(&d).containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names.last(), Some(&"RUST_LOG"));
    assert_eq!(
        pod(&d).containers[0]
            .env_from
            .as_ref()
            .and_then(|e| e[0].config_map_ref.as_ref())
            .map(|c| c.name.as_str()),
        Some("proxy-settings")
    );
    assert_eq!(
        pod(&d).priority_class_name.as_deref(),
        Some("chat-critical")
    );
    assert_eq!(
        pod(&d).service_account_name.as_deref(),
        Some("chat-gateway")
    );
    // The JWT secret is a file, not an env var.
    let vol = pod(&d)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "jwt-secret")
        .expect("jwt volume");
    assert_eq!(
        vol.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
        Some("jwt")
    );
    assert_eq!(
        pod(&d).termination_grace_period_seconds,
        Some(90 + DRAIN_MARGIN_SECONDS)
    );
    assert_eq!(d.spec.as_ref().and_then(|s| s.min_ready_seconds), Some(20));
}

#[test]
fn no_otel_env_without_an_endpoint_and_pod_labels_merge() {
    let d = deployment(MINIMAL);
    assert!(env_of(&d, "OTEL_EXPORTER_OTLP_ENDPOINT").is_none());
    assert!(env_of(&d, "CHATGW_REDIS__URL").is_none());
    assert_eq!(pod(&d).priority_class_name, None);
    let d = deployment(FULL);
    assert_eq!(
        d.spec.as_ref().and_then(|s| s.replicas),
        Some(3),
        "a new autoscaled Deployment starts at minReplicas"
    );
    let labels = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .expect("labels");
    assert_eq!(labels.get("team").map(String::as_str), Some("chat"));
}

#[test]
fn user_sidecars_are_native_unless_turned_off() {
    let spec = format!("{SIDECARS}\nnativeSidecars: true");
    let d = deployment(&spec);
    let init: Vec<_> = pod(&d)
        .init_containers
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.restart_policy.as_deref()))
        .collect();
    assert_eq!(
        init,
        [("otel-collector", Some("Always")), ("bot", Some("Always"))]
    );
    let names: Vec<_> = pod(&d).containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["gateway"]);
    // Unchanged apart from the restart policy.
    let bot = &pod(&d).init_containers.as_ref().expect("init")[1];
    assert_eq!(bot.image.as_deref(), Some("registry.example/bot:1.0"));
    assert!(bot.readiness_probe.is_some());

    let plain = deployment(&format!("{SIDECARS}\nnativeSidecars: false"));
    let names: Vec<_> = pod(&plain)
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.restart_policy.as_deref()))
        .collect();
    assert_eq!(names, [("gateway", None), ("bot", None)]);
}

#[test]
fn every_key_file_the_config_names_is_mounted_there_and_readable_by_the_gateway() {
    for spec in [
        FULL,
        "gateway: {auth: {jwt: {algorithm: EdDSA, publicKeySecretRef: {name: pub, key: ed.pem}, audience: a}}}",
    ] {
        let c = cgw(spec);
        let config = configmap::gateway_config(&c).expect("config");
        let d = deployment(spec);
        let pod = pod(&d);
        let gateway = &pod.containers[0];
        let files: Vec<_> = [
            &config.auth.jwt.secret_file,
            &config.auth.jwt.public_key_file,
            &config.auth.jwt.jwks_file,
        ]
        .into_iter()
        .flatten()
        .collect();
        assert!(!files.is_empty(), "{spec}");
        for file in files {
            let (dir, base) = (file.parent().expect("dir"), file.file_name().expect("name"));
            let mount = gateway
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| std::path::Path::new(&m.mount_path) == dir)
                .unwrap_or_else(|| panic!("{spec}: nothing mounted at {}", dir.display()));
            // A whole-volume mount: the kubelet updates it in place (subPath mounts never are).
            assert_eq!(mount.sub_path, None);
            assert_eq!(mount.read_only, Some(true));
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .and_then(|v| v.secret.as_ref())
                .expect("a Secret volume");
            let item = &volume.items.as_ref().expect("items")[0];
            assert_eq!(std::ffi::OsStr::new(&item.path), base, "{spec}");
            assert_eq!(item.mode, Some(0o440));
            let referenced = crate::secrets::refs(&c.spec)
                .into_iter()
                .any(|(r, _)| Some(&r.name) == volume.secret_name.as_ref() && r.key == item.key);
            assert!(referenced, "{spec}: {} from an unreferenced key", file.display());
        }
        // The kubelet writes the files as root; the fsGroup makes them readable by the
        // image's non-root user (and by `kubectl exec ... chat-gateway token`).
        let security = pod.security_context.as_ref().expect("pod security context");
        assert_eq!(security.fs_group, Some(pod::GATEWAY_GROUP));
    }
    let volumes = |spec: &str| -> Vec<String> {
        pod(&deployment(spec))
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.clone())
            .collect()
    };
    assert_eq!(volumes(FULL), ["config", "jwt-secret", "jwt-jwks"]);
    assert_eq!(volumes(MINIMAL), ["config"]);
}

/// The minimal spec with the collector sidecar: both containers the operator builds.
fn with_collector() -> String {
    format!("{MINIMAL}\ntelemetry: {{otlpEndpoint: http://j:4317, collector: {{enabled: true}}}}")
}

/// A spec that names no resources gets docs/operator.md's: CPU and memory requests and a
/// memory limit, no CPU limit, for the gateway and (smaller) for the collector.
#[test]
fn containers_without_resources_get_the_documented_defaults() {
    let d = deployment(&with_collector());
    let pod = pod(&d);
    let resources = |c: &Container| {
        let r = c.resources.clone().expect("resources");
        let (requests, limits) = (r.requests.unwrap_or_default(), r.limits.unwrap_or_default());
        let get = |m: &BTreeMap<String, Quantity>, k: &str| m.get(k).map(|q| q.0.clone());
        let (cpu, memory) = (get(&requests, "cpu"), get(&requests, "memory"));
        (cpu, memory, get(&limits, "memory"), get(&limits, "cpu"))
    };
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        resources(&pod.containers[0]),
        (some("100m"), some("128Mi"), some("512Mi"), None)
    );
    let collector = pod.init_containers.as_ref().expect("init containers");
    assert_eq!(
        resources(&collector[0]),
        (some("50m"), some("64Mi"), some("256Mi"), None)
    );
}

/// The restricted Pod Security Standard, which a namespace may enforce: every container the
/// operator builds (the gateway and the collector sidecar) runs as non-root on a read-only
/// root filesystem, with no privilege escalation and no capabilities.
#[test]
fn every_container_is_restricted() {
    let d = deployment(&with_collector());
    let pod = pod(&d);
    let containers: Vec<&Container> = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .collect();
    assert_eq!(containers.len(), 2, "the gateway and the collector");
    for c in containers {
        let s = c.security_context.as_ref().expect("a security context");
        assert_eq!(s.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(s.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(s.run_as_non_root, Some(true), "{}", c.name);
        let caps = s.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{}",
            c.name
        );
        assert_eq!(caps.add, None, "{}", c.name);
    }
}
