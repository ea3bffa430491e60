//! The `ChatGateway` custom resource (group `chatgateway.io`; `v1beta1` stored, `v1alpha1`
//! served with the same schema).
//!
//! Validation that the API server can do (required fields, ranges, enums, patterns, CEL
//! rules) is in the schema so that bad specs are refused at `kubectl apply` time instead
//! of in the loop; `crate::validate` repeats the CEL rules for API servers without CEL.
//! Schema defaults spell out what the builders default to, so `kubectl explain` shows them.

mod auth;
mod backend;
mod gateway;
mod namespaces;
mod redis;
mod scaling;
mod versions;

pub use auth::*;
pub use backend::*;
pub use gateway::*;
pub use namespaces::*;
pub use redis::*;
pub use scaling::*;
pub use versions::crd;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvFromSource, EnvVar, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Pattern of a duration field: humantime units the gateway also accepts, e.g. `25s`, `1m30s`
/// (also Go's duration syntax, so CEL's `duration()` reads them).
const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// The version the operator reads and writes, and the one stored.
pub const VERSION: &str = "v1beta1";
/// The first version, still served (deprecated) with the same schema.
pub const OLD_VERSION: &str = "v1alpha1";

/// Desired state of one gateway deployment.
// Clippy mistakes the repeated `type_ = "integer"` of two printer columns for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "chatgateway.io",
    version = "v1beta1",
    kind = "ChatGateway",
    namespaced,
    shortname = "cgw",
    status = "ChatGatewayStatus",
    derive = "PartialEq",
    doc = "A WebSocket chat gateway: its Deployment, ConfigMap, Service, autoscaler and disruption budget.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Ready-Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Connections-Per-Pod",
        type_ = "integer",
        json_path = ".status.connections.perPod"
    ),
    printcolumn(
        name = "Connections-Target",
        type_ = "integer",
        json_path = ".spec.autoscaling.targetConnectionsPerPod"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["gateway"]))]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.gateway) && has(self.gateway.redis)) || ((!has(self.replicas) || self.replicas <= 1) && !(has(self.autoscaling) && self.autoscaling.enabled))",
     "message": "the memory engine makes every pod its own chat server: more than one replica or autoscaling needs gateway.redis"},
    {"rule": "!has(self.disruptionBudget) || !self.disruptionBudget.enabled || !has(self.disruptionBudget.minAvailable) || (string(self.disruptionBudget.minAvailable).endsWith('%') ? (int(string(self.disruptionBudget.minAvailable).replace('%', '')) * ((has(self.autoscaling) && self.autoscaling.enabled) ? (has(self.autoscaling.minReplicas) ? self.autoscaling.minReplicas : 2) : (has(self.replicas) ? self.replicas : ((has(self.gateway) && has(self.gateway.redis)) ? 2 : 1))) + 99) / 100 : int(string(self.disruptionBudget.minAvailable))) < ((has(self.autoscaling) && self.autoscaling.enabled) ? (has(self.autoscaling.minReplicas) ? self.autoscaling.minReplicas : 2) : (has(self.replicas) ? self.replicas : ((has(self.gateway) && has(self.gateway.redis)) ? 2 : 1)))",
     "message": "disruptionBudget.minAvailable must stay below the replica floor (autoscaling.minReplicas, or replicas): otherwise no pod can ever be evicted and node drains block forever"}
]))]
pub struct ChatGatewaySpec {
    /// Container image; defaults to the operator's `--gateway-image` (the gateway release
    /// matching the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Names of Secrets used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Pod count when autoscaling is off (also what `kubectl scale` sets). Unset: 2 with
    /// Redis, 1 with the memory engine for a new gateway, and the live count afterwards (so
    /// turning autoscaling off keeps the pods the autoscaler had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Container CPU/memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Gateway settings written into its config file; `gateway.auth` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
    /// Extra environment variables of the gateway container (not `CHATGW_*`, which would
    /// bypass the checked config: use `gateway.config`, and not the operator's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub env: Vec<EnvVar>,
    /// Environment of the gateway container from ConfigMaps or Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub env_from: Vec<EnvFromSource>,
    /// Graceful drain on pod termination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainSpec>,
    /// How a rollout replaces the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Horizontal autoscaling on open connections per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// PodDisruptionBudget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudgetSpec>,
    /// OpenTelemetry tracing export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetrySpec>,
    /// The Service in front of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// Where pods are scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// ServiceAccount the pods run as; default the namespace's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Mount a Kubernetes API token into the pods; default false, since the gateway never
    /// calls the API. Set true when a sidecar needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub automount_service_account_token: Option<bool>,
    /// Extra labels on the pods (selector labels always win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Extra containers in the gateway pod (a team's backend, a bot), added as given;
    /// forwarding routes can reach them as `localhost:PORT`. Names must differ from each
    /// other and from `gateway` and `otel-collector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"],
        "x-kubernetes-validations" = [
            {"rule": "self.all(c, c.name != 'gateway' && c.name != 'otel-collector')",
             "message": "sidecars[].name must not be gateway or otel-collector (the operator's own containers)"}
        ]
    ))]
    pub sidecars: Vec<Container>,
    /// Run `sidecars` as native sidecars (init containers with `restartPolicy: Always`:
    /// started before the gateway, stopped after it, so routes to them work for the whole
    /// drain); default true. Clusters before 1.29 get plain containers (reported in status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub native_sidecars: Option<bool>,
    /// A NetworkPolicy for the gateway pods; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
}

/// NetworkPolicy of the gateway pods (needs a CNI that enforces NetworkPolicy). Ingress is
/// limited to the gateway port; egress only when `egress` is set.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicy; default true when this section is present. Set false to
    /// remove one created before.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may connect to the gateway port (WebSocket, health, metrics); empty: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_from: Vec<NetworkPolicyPeer>,
    /// Where the pods may connect besides DNS (Redis, the OTLP endpoint, route upstreams);
    /// all other egress is then denied. Unset: egress is not restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
}

/// Kubernetes image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The string Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

fn default_true() -> bool {
    true
}

/// OpenTelemetry tracing export (standard OTEL_* variables).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.collector) || !has(self.collector.enabled) || !self.collector.enabled || has(self.otlpEndpoint)",
     "message": "telemetry.collector needs telemetry.otlpEndpoint (where the collector exports to)"}
]))]
pub struct TelemetrySpec {
    /// OTLP/gRPC endpoint, e.g. `http://otel-collector.observability:4317`; unset disables export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^https?://"))]
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled (parent-based), 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0), extend("default" = 0.1))]
    pub sampling_ratio: Option<f64>,
    /// `service.name` of the spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "chat-gateway"))]
    pub service_name: Option<String>,
    /// An OpenTelemetry Collector in each pod: the gateway exports to it on localhost and it
    /// forwards to `otlpEndpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorSpec>,
}

/// OpenTelemetry Collector sidecar.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorSpec {
    /// Add the collector to the pods; default false.
    #[serde(default)]
    pub enabled: bool,
    /// Collector image; default a pinned `otel/opentelemetry-collector` release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Image pull policy of the collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Collector CPU/memory requests and limits; default requests 50m / 64Mi, limit 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Run the collector as a Kubernetes native sidecar (an init container with
    /// `restartPolicy: Always`: it starts before the gateway and stops after it). Set
    /// false on clusters without native sidecars (before 1.29) to get a plain container,
    /// which gives no start or stop ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub native_sidecar: Option<bool>,
}

/// Service in front of the pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.externalTrafficPolicy) || (has(self.type) && self.type != 'ClusterIP')",
     "message": "service.externalTrafficPolicy applies to type LoadBalancer or NodePort"}
]))]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "ClusterIP"))]
    pub type_: Option<ServiceType>,
    /// Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535), extend("default" = 80))]
    pub port: Option<i32>,
    /// Annotations, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// For LoadBalancer and NodePort: `Local` keeps the client's address (the gateway's
    /// per-IP limits then count clients; with `Cluster` a node forwarding the connection
    /// puts its own address in place, and they count nodes) and sends outside traffic
    /// only to nodes with a gateway pod. Unset: Kubernetes' default, `Cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
}

/// Where a Service's outside traffic may go (`spec.externalTrafficPolicy`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExternalTrafficPolicy {
    /// Any node's pods; the client's address is replaced by a node's.
    Cluster,
    /// The receiving node's own pods; the client's address is kept.
    Local,
}

impl ExternalTrafficPolicy {
    /// The string Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalTrafficPolicy::Cluster => "Cluster",
            ExternalTrafficPolicy::Local => "Local",
        }
    }
}

/// Kubernetes Service type.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Cluster-internal virtual IP.
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// A cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The string Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Pod placement.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Pod affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Topology spread; unset spreads by zone and by node, `[]` turns spreading off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

/// Observed state, written by the operator through the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatGatewayStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Available, Progressing, Reconciled and Degraded (one per type).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Pods of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods passing readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Label selector of the pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Open connections the operator reads from the pods (what an HPA on
    /// `chatgateway_connections` sees); written by the custom metrics API's reporter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionsStatus>,
}

/// Open WebSocket connections per the pods' own `chatgateway_connections` gauges, as the
/// operator's custom metrics API serves them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionsStatus {
    /// Average over the pods read: the value an HPA compares with
    /// `targetConnectionsPerPod`. Absent when no pod could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_pod: Option<i64>,
    /// Sum over the pods read.
    #[serde(default)]
    pub total: i64,
    /// Running pods whose /metrics was read.
    #[serde(default)]
    pub pods_read: i32,
    /// Running pods that could not be read: left out of `total` and `perPod`.
    #[serde(default)]
    pub pods_unread: i32,
    /// When the pods were read (refreshed at least every 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod cel_tests;
