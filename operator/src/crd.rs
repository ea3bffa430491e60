//! The `ChatGateway` custom resource (group `chatgateway.io`, version `v1alpha1`).
//!
//! Every field is optional so that a minimal resource is `spec: {}`; the builders fill in
//! defaults. Validation that the API server can do (ranges, enums, patterns, CEL rules) is in
//! the schema so that bad specs are refused at `kubectl apply` time instead of in the loop.

use k8s_openapi::api::core::v1::{
    Affinity, Container, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Pattern of a duration field: humantime units the gateway also accepts, e.g. `25s`, `1m30s`.
const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// Desired state of one gateway deployment.
// Clippy mistakes the repeated `type_ = "integer"` of two printer columns for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "chatgateway.io",
    version = "v1alpha1",
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
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
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
pub struct ChatGatewaySpec {
    /// Container image; defaults to the operator's own release of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Names of Secrets used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Pod count when autoscaling is off (also what `kubectl scale` sets); default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Container CPU/memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Gateway settings written into its config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
    /// Graceful drain on pod termination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainSpec>,
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
    /// Extra labels on the pods (selector labels always win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Extra containers in the gateway pod (a team's backend, a bot), added as given after
    /// the gateway container; forwarding routes can reach them as `localhost:PORT`. Names
    /// must differ from each other and from `gateway` and `otel-collector`.
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

/// A key in a Secret of the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Gateway settings (a subset of the gateway config, plus Secret references).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Browser origins allowed to open a socket; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Redis engine; without it each pod runs the single-node memory engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Client authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Server WebSocket ping period, e.g. `25s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub heartbeat_interval: Option<String>,
    /// Per-connection limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Room history retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<RetentionSpec>,
    /// Direct-message inbox retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<RetentionSpec>,
    /// Resume sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsSpec>,
    /// Connection rebalancing between pods (`rebalance` in the gateway config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceSpec>,
    /// WebSocket forwarding routes to backend services (`routes` in the gateway config);
    /// the longest matching path prefix wins. Names are unique (the list is keyed by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub routes: Vec<RouteSpec>,
}

/// One WebSocket forwarding route: authenticate at the gateway, then pipe frames to an
/// upstream. Unset fields keep the gateway's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(self.pathPrefix in ['/ws', '/healthz', '/readyz', '/metrics', '/client.js']) && !['/ws/', '/healthz/', '/readyz/', '/metrics/', '/client.js/'].exists(p, self.pathPrefix.startsWith(p))",
     "message": "routes[].pathPrefix collides with the gateway's own endpoints"}
]))]
pub struct RouteSpec {
    /// Short name, the metrics label (never the path): `[a-z0-9-]`, unique.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9-]+$"))]
    pub name: String,
    /// Requests whose path starts with this (`/bots` matches `/bots` and `/bots/...`).
    #[schemars(length(min = 2, max = 256), pattern(r"^/.+"))]
    pub path_prefix: String,
    /// `ws://host:port/base`, a Service as `name:port` or `name.namespace:port`, or
    /// `localhost:port` for a sidecar.
    #[schemars(length(min = 1, max = 512))]
    pub upstream: String,
    /// Remove `pathPrefix` from the path sent upstream; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
    /// Extra request headers sent upstream.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Send the authenticated user id as `X-Chat-User`; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_user: Option<bool>,
    /// Send the W3C `traceparent` upstream; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_trace: Option<bool>,
    /// Deadline of one dial (TCP connect + WebSocket handshake), e.g. `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub connect_timeout: Option<String>,
    /// Extra dial attempts after a failure; default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,
    /// Wait before the first retry, doubling each time, e.g. `200ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub retry_backoff: Option<String>,
    /// Open connections through this route at most (503 beyond); 0 = unlimited; default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000000))]
    pub max_connections: Option<i64>,
    /// Largest message piped in either direction (close 1009 beyond); default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 67108864))]
    pub max_frame_bytes: Option<i64>,
}

/// Redis engine settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Secret key holding the `redis://` URL (it may carry a password).
    pub url_secret_ref: SecretKeyRef,
    /// Prefix of every key and channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub key_prefix: Option<String>,
    /// How long Redis may be unreachable before readiness fails, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub readiness_grace: Option<String>,
}

/// Authentication settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.mode) && self.mode == 'insecure') || has(self.jwt)",
     "message": "auth.jwt is required unless auth.mode is insecure"}
]))]
pub struct AuthSpec {
    /// `jwt` (default) or `insecure` (demo only: `?user=NAME` is trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AuthModeSpec>,
    /// JWT verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
}

/// Authentication mode.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthModeSpec {
    /// Signed JWT required.
    Jwt,
    /// Trust `?user=NAME`; for demos only.
    Insecure,
}

/// JWT algorithm.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JwtAlgorithmSpec {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSA-SHA256 with a PEM public key.
    RS256,
}

/// JWT verification settings; keys come from Secrets mounted as files.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.algorithm) || self.algorithm != 'RS256' || has(self.publicKeySecretRef)",
     "message": "RS256 needs publicKeySecretRef"},
    {"rule": "(has(self.algorithm) && self.algorithm == 'RS256') || has(self.secretRef)",
     "message": "HS256 needs secretRef"}
]))]
pub struct JwtSpec {
    /// HS256 (default) or RS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<JwtAlgorithmSpec>,
    /// Secret key holding the HS256 shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the RS256 PEM public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_secret_ref: Option<SecretKeyRef>,
    /// Required `iss` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew tolerated, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub leeway: Option<String>,
}

/// Per-connection limits; unset fields keep the gateway's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest accepted WebSocket message in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 16777216))]
    pub max_frame_bytes: Option<i64>,
    /// Sustained commands per second per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub message_rate: Option<i64>,
    /// Commands allowed in a burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub message_burst: Option<i64>,
    /// Rooms one connection may join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub rooms_per_connection: Option<i64>,
    /// Open connections per client IP; 0 disables the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub connections_per_ip: Option<i64>,
    /// Frames queued per connection before it is closed as a slow consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub outbound_queue_frames: Option<i64>,
    /// Bytes queued per connection before it is closed as a slow consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 1073741824))]
    pub outbound_queue_bytes: Option<i64>,
    /// Consecutive errors before the connection is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_errors_in_row: Option<i64>,
    /// Longest room name in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_room_name: Option<i64>,
}

/// Retention of a message stream.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Messages kept per stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_messages: Option<i64>,
    /// Age after which messages are dropped, e.g. `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_age: Option<String>,
}

/// Resume sessions.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionsSpec {
    /// How long a disconnected session can be resumed, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub resume_ttl: Option<String>,
    /// How long a client message id is remembered for de-duplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub dedup_window: Option<String>,
}

/// Connection rebalancing between pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceSpec {
    /// Shed connections from pods well above the mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How far above the cluster mean, in percent, a pod may be before it sheds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub tolerance_percent: Option<i32>,
    /// Connections shed per second per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub rate: Option<i32>,
}

/// Graceful drain on pod termination.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// Delay after SIGTERM before new upgrades are refused, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub accept_grace: Option<String>,
    /// Connections told to go away per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub evict_rate: Option<i32>,
    /// Deadline of the whole drain, e.g. `60s`; the pod grace period is this plus a margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// Horizontal autoscaling on open connections per pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.minReplicas) ? self.minReplicas : 2) <= (has(self.maxReplicas) ? self.maxReplicas : 10)",
     "message": "autoscaling.minReplicas (default 2) must not exceed maxReplicas (default 10)"}
]))]
pub struct AutoscalingSpec {
    /// Create a HorizontalPodAutoscaler (spec.replicas is then ignored).
    #[serde(default)]
    pub enabled: bool,
    /// Fewest pods; default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Most pods; default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: Option<i32>,
    /// Average open connections per pod the autoscaler aims for; default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub target_connections_per_pod: Option<i64>,
    /// Also scale on CPU, at this average utilisation percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// How fast pods are removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleDownSpec>,
}

/// Scale-down behaviour: removing a pod drains its sockets, so go slowly.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDownSpec {
    /// Seconds of lower recommendations before scaling down; default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,
    /// Pods removed per period at most; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub pods_per_period: Option<i32>,
    /// Period length in seconds; default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: Option<i32>,
}

/// PodDisruptionBudget; at most one of maxUnavailable and minAvailable.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.maxUnavailable) && has(self.minAvailable))",
     "message": "set maxUnavailable or minAvailable, not both"}
]))]
pub struct DisruptionBudgetSpec {
    /// Create a PodDisruptionBudget; default true when this section is present.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods (or percent) that may be down at once; default 1 when neither is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Pods (or percent) that must stay up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
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
    /// Fraction of new traces sampled (parent-based), 0 to 1; default 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_ratio: Option<f64>,
    /// `service.name` of the spans; default `chat-gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// `restartPolicy: Always`: it starts before the gateway and stops after it); default
    /// true. Set false on clusters without native sidecars (before 1.29) to get a plain
    /// container, which gives no start or stop ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_sidecar: Option<bool>,
}

/// Service in front of the pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type; default ClusterIP.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Service port; default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Annotations, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
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
    /// Ready, Progressing and Degraded.
    #[serde(default)]
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// Path of the checked-in CRD, relative to this crate.
    const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/chatgateway.yaml");

    #[test]
    fn crd_file_is_in_sync_with_the_rust_types() {
        let generated = crate::crd_yaml().expect("CRD serialises");
        let on_disk = std::fs::read_to_string(CRD_FILE).unwrap_or_default();
        assert!(
            on_disk == generated,
            "crds/chatgateway.yaml is out of date: run \
             `cargo run -p chat-gateway-operator --bin crdgen > crds/chatgateway.yaml`"
        );
    }

    #[test]
    fn crd_has_names_subresources_and_columns() {
        let crd = ChatGateway::crd();
        assert_eq!(crd.spec.group, "chatgateway.io");
        assert_eq!(crd.spec.names.short_names, Some(vec!["cgw".to_string()]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        let sub = v.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().expect("scale");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Replicas", "Ready", "Connections-Target", "Age"]);
    }

    #[test]
    fn schema_is_structural() {
        // The API server refuses schemas whose shape depends on values: no anyOf/oneOf
        // without a type at the same level, every node typed or int-or-string.
        let crd = serde_json::to_value(ChatGateway::crd()).expect("json");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut problems = Vec::new();
        check_structural(schema, "$", &mut problems);
        assert!(problems.is_empty(), "non-structural schema: {problems:#?}");
    }

    fn check_structural(node: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
        let Some(obj) = node.as_object() else { return };
        let typed = obj.contains_key("type")
            || obj.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true))
            || obj.get("x-kubernetes-preserve-unknown-fields")
                == Some(&serde_json::Value::Bool(true));
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        for bad in [
            "$ref",
            "definitions",
            "$defs",
            "oneOf",
            "anyOf",
            "allOf",
            "not",
        ] {
            if obj.contains_key(bad) && !obj.contains_key("x-kubernetes-int-or-string") {
                problems.push(format!("{path}: has {bad}"));
            }
        }
        if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                check_structural(v, &format!("{path}.{k}"), problems);
            }
        }
        if let Some(items) = obj.get("items") {
            check_structural(items, &format!("{path}[]"), problems);
        }
        if let Some(extra) = obj.get("additionalProperties") {
            if extra.is_object() {
                check_structural(extra, &format!("{path}{{}}"), problems);
            }
        }
    }
}

#[cfg(test)]
mod cel_tests {
    //! The CEL rules, evaluated client-side by kube's CEL validator: the envtest apiserver
    //! (v1.20) ignores them, and a rule that fails to compile would make a 1.33+ cluster
    //! refuse the whole CRD.
    use super::*;

    fn check(spec: &str) -> Result<(), String> {
        let spec: ChatGatewaySpec = serde_yaml::from_str(spec).expect("spec");
        kube::core::cel::validate_cel(&ChatGateway::new("x", spec)).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn valid_specs_pass() {
        for spec in [
            "{}",
            "gateway: {auth: {mode: insecure}}",
            "gateway: {auth: {jwt: {secretRef: {name: s, key: k}}}}",
            "gateway: {auth: {mode: jwt, jwt: {algorithm: RS256, publicKeySecretRef: {name: s, key: k}}}}",
            "autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 3}",
            "autoscaling: {enabled: true, minReplicas: 8}",
            "disruptionBudget: {minAvailable: 1}",
            "gateway: {auth: {mode: insecure}, routes: [{name: a, pathPrefix: /wsx, upstream: 's:80'}]}",
            "sidecars: [{name: bot, image: b}]\ntelemetry: {collector: {enabled: false}}",
            crate::builders::testing::SIDECARS,
            crate::builders::testing::FULL,
        ] {
            assert_eq!(check(spec), Ok(()), "{spec}");
        }
    }

    #[test]
    fn route_rule_refuses_exactly_the_gateways_reserved_paths() {
        let route = |prefix: &str| {
            format!("gateway: {{auth: {{mode: insecure}}, routes: [{{name: a, pathPrefix: '{prefix}', upstream: 's:80'}}]}}")
        };
        for path in chat_gateway_config::RESERVED_PATHS {
            assert!(check(&route(path)).is_err(), "{path} must be refused");
            assert!(
                check(&route(&format!("{path}/x"))).is_err(),
                "{path}/x must be refused"
            );
            assert_eq!(
                check(&route(&format!("{path}x"))),
                Ok(()),
                "{path}x is another path"
            );
        }
    }

    #[test]
    fn invalid_specs_are_refused_with_the_rule_message() {
        for (spec, message) in [
            (
                "autoscaling: {minReplicas: 5, maxReplicas: 4}",
                "must not exceed maxReplicas",
            ),
            (
                "autoscaling: {minReplicas: 20}",
                "must not exceed maxReplicas",
            ),
            (
                "disruptionBudget: {minAvailable: 1, maxUnavailable: 1}",
                "not both",
            ),
            ("gateway: {auth: {mode: jwt}}", "auth.jwt is required"),
            ("gateway: {auth: {}}", "auth.jwt is required"),
            (
                "gateway: {auth: {jwt: {algorithm: RS256}}}",
                "RS256 needs publicKeySecretRef",
            ),
            (
                "gateway: {auth: {jwt: {issuer: me}}}",
                "HS256 needs secretRef",
            ),
            (
                "sidecars: [{name: bot, image: b}, {name: gateway, image: g}]",
                "must not be gateway or otel-collector",
            ),
            (
                "sidecars: [{name: otel-collector, image: o}]",
                "must not be gateway or otel-collector",
            ),
            (
                "telemetry: {collector: {enabled: true}}",
                "needs telemetry.otlpEndpoint",
            ),
            (
                "gateway: {auth: {mode: insecure}, routes: [{name: a, pathPrefix: /metrics, upstream: 's:80'}]}",
                "collides with the gateway's own endpoints",
            ),
            (
                "gateway: {auth: {mode: insecure}, routes: [{name: a, pathPrefix: /ws/x, upstream: 's:80'}]}",
                "collides with the gateway's own endpoints",
            ),
        ] {
            let err = check(spec).expect_err(spec);
            assert!(err.contains(message), "{spec}: {err}");
        }
    }
}
