//! Deployment of the gateway pods.

use super::collector;
use super::configmap::{CONFIG_DIR, CONFIG_KEY, JWT_PUBLIC_KEY_FILE, JWT_SECRET_FILE};
use super::{parse_duration, Owner, CONFIG_HASH_ANNOTATION, HTTP_PORT};
use crate::crd::ChatGateway;
use crate::error::{Error, Result};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, LocalObjectReference, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Image used when the spec names none: the gateway release matching this operator.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/chatgateway/chat-gateway:",
    env!("CARGO_PKG_VERSION")
);
/// Pods when autoscaling is off and the spec says nothing.
pub const DEFAULT_REPLICAS: i32 = 2;
/// Drain deadline when the spec says nothing: the gateway's own default.
pub fn default_drain_timeout() -> Duration {
    chat_gateway_config::Config::default().drain.timeout
}
/// Time on top of the drain deadline before the kubelet kills the pod: flushing traces and
/// closing the last sockets happen after the deadline.
pub const DRAIN_MARGIN_SECONDS: i64 = 15;
/// Name of the gateway container.
pub const CONTAINER: &str = "gateway";

/// Refuses sidecars named like the operator's own containers or like each other (the
/// schema refuses them too, but CEL and list keys are not enforced by every API server).
pub fn check_sidecar_names(cgw: &ChatGateway) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in cgw.spec.sidecars.iter().enumerate() {
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

/// The Deployment; `config_hash` (and `collector_hash` when the collector runs) go on the
/// pod template so config changes roll the pods.
pub fn build(
    cgw: &ChatGateway,
    owner: &Owner,
    config_hash: &str,
    collector_hash: Option<&str>,
) -> Result<Deployment> {
    check_sidecar_names(cgw)?;
    let spec = &cgw.spec;
    let autoscaling = spec.autoscaling.as_ref().is_some_and(|a| a.enabled);
    let drain = spec.drain.clone().unwrap_or_default();
    let drain_timeout = parse_duration(
        "drain.timeout",
        drain.timeout.as_deref(),
        default_drain_timeout(),
    )?;
    let grace = i64::try_from(drain_timeout.as_secs()).unwrap_or(i64::MAX / 2)
        + i64::from(drain_timeout.subsec_nanos() > 0)
        + DRAIN_MARGIN_SECONDS;

    let mut pod_labels = spec.pod_labels.clone();
    pod_labels.extend(owner.selector_labels());
    let mut pod_annotations = spec.pod_annotations.clone();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());
    if let Some(hash) = collector_hash {
        pod_annotations.insert(collector::HASH_ANNOTATION.into(), hash.into());
    }
    pod_annotations.insert("prometheus.io/scrape".into(), "true".into());
    pod_annotations.insert("prometheus.io/port".into(), HTTP_PORT.to_string());

    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    volumes.push(Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: owner.config_map_name(),
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
    let jwt = spec
        .gateway
        .as_ref()
        .and_then(|g| g.auth.as_ref())
        .and_then(|a| a.jwt.as_ref());
    let secret_files = [
        (
            "jwt-secret",
            jwt.and_then(|j| j.secret_ref.as_ref()),
            JWT_SECRET_FILE,
        ),
        (
            "jwt-public-key",
            jwt.and_then(|j| j.public_key_secret_ref.as_ref()),
            JWT_PUBLIC_KEY_FILE,
        ),
    ];
    for (name, secret, file) in secret_files {
        let Some(secret) = secret else { continue };
        let file = Path::new(file);
        let dir = file
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let base = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        volumes.push(Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: base,
                    mode: Some(0o440),
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: name.into(),
            mount_path: dir,
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let container = Container {
        name: CONTAINER.into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
        ),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env(cgw)),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        volume_mounts: Some(mounts),
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
    containers.extend(spec.sidecars.iter().cloned());

    let placement = spec.placement.clone().unwrap_or_default();
    let spread = placement
        .topology_spread_constraints
        .clone()
        .unwrap_or_else(|| default_spread(owner));
    let pod = PodSpec {
        containers,
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        termination_grace_period_seconds: Some(grace),
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
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };

    Ok(Deployment {
        metadata: owner.meta(&owner.name),
        spec: Some(DeploymentSpec {
            // With autoscaling on the HPA decides; a new Deployment starts at minReplicas and
            // the reconciler re-applies the live count (see `hpa_replicas`).
            replicas: if autoscaling {
                Some(hpa_replicas(cgw, None))
            } else {
                Some(spec.replicas.unwrap_or(DEFAULT_REPLICAS))
            },
            selector: LabelSelector {
                match_labels: Some(owner.selector_labels()),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // Surge new pods first and never drop below the desired count: every pod
                // removed makes its clients reconnect, so capacity must be there first.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// Replicas to apply while the HPA owns scaling: the live count, kept within min..=max.
///
/// Leaving the field out of the apply would hand it to nobody, and the API server would
/// reset it to 1 (server-side apply removes fields an applier stops sending), scaling a
/// busy gateway down to one pod until the HPA reacts. Re-applying what is live keeps it.
pub fn hpa_replicas(cgw: &ChatGateway, live: Option<i32>) -> i32 {
    let a = cgw.spec.autoscaling.clone().unwrap_or_default();
    let min = a.min_replicas.unwrap_or(super::hpa::DEFAULT_MIN);
    let max = a.max_replicas.unwrap_or(super::hpa::DEFAULT_MAX).max(min);
    live.unwrap_or(min).clamp(min, max)
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

/// Environment: pod identity from the downward API, Redis URL from its Secret, OTEL_*.
fn env(cgw: &ChatGateway) -> Vec<EnvVar> {
    // POD_NAME and POD_NAMESPACE come first: later values reference them as $(VAR).
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(redis) = cgw.spec.gateway.as_ref().and_then(|g| g.redis.as_ref()) {
        env.push(EnvVar {
            name: "CHATGW_REDIS__URL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: redis.url_secret_ref.name.clone(),
                    key: redis.url_secret_ref.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            value: None,
        });
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
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("100m".into())),
            ("memory".into(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity("512Mi".into()),
        )])),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::*;

    fn deployment(spec: &str) -> Deployment {
        let cgw = cgw(spec);
        build(
            &cgw,
            &Owner::of(&cgw, "default").expect("owner"),
            "abc123",
            None,
        )
        .expect("build")
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn env_of<'a>(d: &'a Deployment, name: &str) -> Option<&'a EnvVar> {
        pod(d).containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)
    }

    #[test]
    fn defaults_probes_replicas_image_and_grace_period() {
        let d = deployment(MINIMAL);
        let spec = d.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(DEFAULT_REPLICAS));
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
        let ann = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .expect("annotations");
        assert_eq!(
            ann.get(CONFIG_HASH_ANNOTATION).map(String::as_str),
            Some("abc123")
        );
    }

    #[test]
    fn autoscaled_replicas_follow_the_live_count_within_bounds() {
        let c = cgw("autoscaling: {enabled: true, minReplicas: 2, maxReplicas: 4}");
        assert_eq!(hpa_replicas(&c, None), 2);
        assert_eq!(hpa_replicas(&c, Some(3)), 3);
        assert_eq!(hpa_replicas(&c, Some(1)), 2);
        assert_eq!(hpa_replicas(&c, Some(9)), 4);
    }

    #[test]
    fn grace_period_is_drain_timeout_plus_margin() {
        let d = deployment("gateway: {auth: {mode: insecure}}\ndrain: {timeout: 2m}");
        assert_eq!(
            pod(&d).termination_grace_period_seconds,
            Some(120 + DRAIN_MARGIN_SECONDS)
        );
        let cgw = cgw("gateway: {auth: {mode: insecure}}\ndrain: {timeout: later}");
        let err = build(&cgw, &Owner::of(&cgw, "default").expect("owner"), "h", None).unwrap_err();
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
        let d = deployment(
            "gateway: {auth: {mode: insecure}}\nplacement: {topologySpreadConstraints: []}",
        );
        assert_eq!(pod(&d).topology_spread_constraints, None);
    }

    #[test]
    fn downward_api_secrets_and_telemetry_env() {
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
        assert!(value("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|v| v.contains("k8s.pod.name=$(POD_NAME)")));
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
    }

    #[test]
    fn no_otel_env_without_an_endpoint_and_no_replicas_under_autoscaling() {
        let d = deployment(MINIMAL);
        assert!(env_of(&d, "OTEL_EXPORTER_OTLP_ENDPOINT").is_none());
        assert!(env_of(&d, "CHATGW_REDIS__URL").is_none());
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
}
