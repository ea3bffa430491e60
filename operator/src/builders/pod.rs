//! The gateway pod: its containers, volumes, environment and security settings.

use super::collector;
use super::configmap::{CONFIG_DIR, CONFIG_KEY};
use super::{auth, backend, parse_duration, Owner, HTTP_PORT};
use crate::crd::ChatGateway;
use crate::error::{Error, Result};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, LocalObjectReference, ObjectFieldSelector, PodSecurityContext,
    PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Image used when neither the spec nor the operator names one: the gateway release
/// matching this operator.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/chatgateway/chat-gateway:",
    env!("CARGO_PKG_VERSION")
);
/// Time on top of the drain deadline before the kubelet kills the pod: flushing traces and
/// closing the last sockets happen after the deadline.
pub const DRAIN_MARGIN_SECONDS: i64 = 15;
/// Name of the gateway container.
pub const CONTAINER: &str = "gateway";
/// Group of the gateway image's user (gateway/Dockerfile: `USER 65532:65532`), set as the
/// pod's `fsGroup`: the kubelet writes Secret files as root, and only with an fsGroup are
/// the key files (mode 0440) readable by a non-root gateway — and by
/// `kubectl exec ... chat-gateway token`, which runs as the same user.
pub const GATEWAY_GROUP: i64 = 65532;

/// Drain deadline when the spec says nothing: the gateway's own default.
pub fn default_drain_timeout() -> Duration {
    chat_gateway_config::Config::default().drain.timeout
}

/// The pods' `terminationGracePeriodSeconds`: the drain deadline plus the margin.
pub fn grace_period_seconds(cgw: &ChatGateway) -> Result<i64> {
    let timeout = parse_duration(
        "drain.timeout",
        cgw.spec.drain.as_ref().and_then(|d| d.timeout.as_deref()),
        default_drain_timeout(),
    )?;
    Ok(i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX / 2)
        + i64::from(timeout.subsec_nanos() > 0)
        + DRAIN_MARGIN_SECONDS)
}

/// Refuses sidecars named like the operator's own containers or like each other (the
/// schema refuses them too, but CEL and list keys are not enforced by every API server),
/// and sidecars declaring a port the gateway or the collector listens on: the pod's
/// containers share one network, and the second to bind would crash-loop, seen only as a
/// rollout that never progresses. (A port a sidecar uses without declaring it cannot be
/// checked.)
pub fn check_sidecars(cgw: &ChatGateway) -> Result<()> {
    let mut taken: Vec<(i32, &str)> = ports(cgw)
        .into_iter()
        .map(|p| (p.container_port, "the gateway's"))
        .collect();
    if collector::enabled(cgw).is_some() {
        taken.extend(collector::PORTS.map(|p| (p, "the collector's")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in cgw.spec.sidecars.iter().enumerate() {
        for p in c.ports.iter().flatten() {
            if let Some((port, whose)) = taken.iter().find(|(t, _)| *t == p.container_port) {
                return Err(Error::InvalidSpec(format!(
                    "sidecars[{i}] ({:?}) declares port {port}, {whose} in the same pod: pick another",
                    c.name
                )));
            }
        }
        if c.name == CONTAINER || c.name == collector::CONTAINER {
            return Err(Error::InvalidSpec(format!(
                "sidecars[{i}].name {:?} clashes with the operator's own container {:?}",
                c.name, c.name
            )));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(Error::InvalidSpec(format!(
                "sidecars[{i}].name {:?} is used twice",
                c.name
            )));
        }
    }
    Ok(())
}

/// Whether `spec.sidecars` run as native sidecars (init containers with
/// `restartPolicy: Always`) rather than plain containers.
pub fn native_sidecars(cgw: &ChatGateway) -> bool {
    cgw.spec.native_sidecars.unwrap_or(true)
}

/// The pod spec; `image` is the gateway image to run.
pub fn spec(cgw: &ChatGateway, owner: &Owner, image: &str, config_hash: &str) -> Result<PodSpec> {
    check_sidecars(cgw)?;
    let spec = &cgw.spec;
    let (mut volumes, mounts) = volumes(cgw, owner, config_hash);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(image.to_string()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(ports(cgw)),
        env: Some(env(cgw)),
        env_from: (!spec.env_from.is_empty()).then(|| spec.env_from.clone()),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        volume_mounts: Some(mounts),
        security_context: Some(restricted()),
        ..Container::default()
    };

    let mut containers = vec![container];
    let mut init_containers = Vec::new();
    if let Some(c) = collector::enabled(cgw) {
        volumes.push(Volume {
            name: collector::VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: owner.collector_config_map_name(),
                items: Some(vec![KeyToPath {
                    key: collector::CONFIG_KEY.into(),
                    path: collector::CONFIG_KEY.into(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        if collector::native(c) {
            // A native sidecar: started before the gateway, stopped after it.
            init_containers.push(collector::container(c));
        } else {
            containers.push(collector::container(c));
        }
    }
    if native_sidecars(cgw) {
        // Started before the gateway (a route to them works from its first connection) and
        // stopped after it (routes keep working for the whole drain). An init container
        // that sets its own restartPolicy keeps it.
        init_containers.extend(spec.sidecars.iter().cloned().map(|mut c| {
            c.restart_policy.get_or_insert_with(|| "Always".into());
            c
        }));
    } else {
        containers.extend(spec.sidecars.iter().cloned());
    }

    let placement = spec.placement.clone().unwrap_or_default();
    let spread = placement
        .topology_spread_constraints
        .clone()
        .unwrap_or_else(|| default_spread(owner));
    Ok(PodSpec {
        // Kubernetes injects `<SERVICE>_PORT=tcp://...` variables for every Service in the
        // namespace; a Service named `chatgw-...` would produce `CHATGW_*` names, which the
        // gateway reads as config overrides. The gateway finds Services through DNS.
        enable_service_links: Some(false),
        // The gateway never calls the Kubernetes API: no token in the pod unless asked.
        automount_service_account_token: Some(
            spec.automount_service_account_token.unwrap_or(false),
        ),
        service_account_name: spec.service_account_name.clone(),
        priority_class_name: spec.priority_class_name.clone(),
        containers,
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        termination_grace_period_seconds: Some(grace_period_seconds(cgw)?),
        volumes: Some(volumes),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty()).then(|| {
            spec.image_pull_secrets
                .iter()
                .map(|n| LocalObjectReference { name: n.clone() })
                .collect()
        }),
        node_selector: (!placement.node_selector.is_empty())
            .then(|| placement.node_selector.clone()),
        tolerations: (!placement.tolerations.is_empty()).then(|| placement.tolerations.clone()),
        affinity: placement.affinity.clone(),
        topology_spread_constraints: (!spread.is_empty()).then_some(spread),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            fs_group: Some(GATEWAY_GROUP),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    })
}

/// `http` (WebSocket, probes, metrics), and `api` when the server API is on.
fn ports(cgw: &ChatGateway) -> Vec<ContainerPort> {
    let port = |name: &str, container_port: i32| ContainerPort {
        name: Some(name.into()),
        container_port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let api = backend::api_port(&cgw.spec).map(|p| port(backend::PORT_NAME, p));
    std::iter::once(port("http", HTTP_PORT))
        .chain(api)
        .collect()
}

/// The config volume (the ConfigMap of the config whose hash is `config_hash`), the key
/// files from their Secrets and the Redis TLS files, with their mounts.
fn volumes(cgw: &ChatGateway, owner: &Owner, config_hash: &str) -> (Vec<Volume>, Vec<VolumeMount>) {
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    volumes.push(Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: owner.config_map_name(config_hash),
            items: Some(vec![KeyToPath {
                key: CONFIG_KEY.into(),
                path: CONFIG_KEY.into(),
                mode: None,
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    mounts.push(VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    for key in auth::key_files(&cgw.spec) {
        let file = Path::new(key.path);
        let dir = file
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let base = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A whole-volume mount (no subPath), so the kubelet updates the file in place when
        // the Secret changes: how a key set rotates without new pods.
        volumes.push(Volume {
            name: key.volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(key.secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: key.secret.key.clone(),
                    path: base,
                    mode: Some(0o440),
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: key.volume.into(),
            mount_path: dir,
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let redis = cgw.spec.gateway.as_ref().and_then(|g| g.redis.as_ref());
    if let Some((volume, mount)) = redis.and_then(super::redis::tls_volume) {
        volumes.push(volume);
        mounts.push(mount);
    }
    (volumes, mounts)
}

/// Non-root, read-only root filesystem, no privilege escalation, no capabilities.
pub(super) fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// An env var read from the pod's own fields (downward API).
pub(super) fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// Environment: pod identity from the downward API, Redis URL and credentials from their
/// Secrets, OTEL_*, then the spec's own `env` (checked not to clash: `validate`).
fn env(cgw: &ChatGateway) -> Vec<EnvVar> {
    // POD_NAME and POD_NAMESPACE come first: later values reference them as $(VAR).
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(redis) = cgw.spec.gateway.as_ref().and_then(|g| g.redis.as_ref()) {
        env.extend(super::redis::env(redis));
    }
    if let Some(t) = cgw.spec.telemetry.as_ref() {
        if let Some(endpoint) = &t.otlp_endpoint {
            // With the collector in the pod the gateway exports to it; it forwards.
            let endpoint = if collector::enabled(cgw).is_some() {
                collector::LOCAL_ENDPOINT.to_string()
            } else {
                endpoint.clone()
            };
            env.push(value_env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
            env.push(value_env(
                "OTEL_SERVICE_NAME",
                t.service_name
                    .clone()
                    .unwrap_or_else(|| "chat-gateway".into()),
            ));
            env.push(value_env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"));
            env.push(value_env(
                "OTEL_TRACES_SAMPLER_ARG",
                t.sampling_ratio.unwrap_or(0.1).to_string(),
            ));
            env.push(value_env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)",
            ));
        }
    }
    env.extend(cgw.spec.env.iter().cloned());
    env
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn default_resources() -> ResourceRequirements {
    // Requests make CPU-based autoscaling possible; a memory limit bounds a leak, no CPU
    // limit so bursts of fan-out are not throttled.
    requests_and_memory_limit("100m", "128Mi", "512Mi")
}

/// CPU and memory requests and a memory limit, no CPU limit: the defaults of the
/// gateway's container and of the collector sidecar.
pub(super) fn requests_and_memory_limit(
    cpu: &str,
    memory: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), quantity(cpu)),
            ("memory".into(), quantity(memory)),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), quantity(memory_limit))])),
        ..ResourceRequirements::default()
    }
}

fn default_spread(owner: &Owner) -> Vec<TopologySpreadConstraint> {
    ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            // Prefer spreading but still schedule on a single-zone or single-node cluster.
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(owner.selector_labels()),
                match_expressions: None,
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}
