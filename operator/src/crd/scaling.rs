//! How the pods are replaced and scaled: the drain on termination, the rollout, the
//! autoscaler and the disruption budget.

use super::{default_true, DURATION_PATTERN};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Graceful drain on pod termination (`drain` in the gateway config).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(has(self.acceptGrace) ? self.acceptGrace : '5s') < duration(has(self.timeout) ? self.timeout : '60s')",
     "message": "drain.acceptGrace (default 5s) must be shorter than drain.timeout (default 60s): the drain would end before the pod stopped accepting"}
]))]
pub struct DrainSpec {
    /// Delay after SIGTERM before new upgrades are refused, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "5s"))]
    pub accept_grace: Option<String>,
    /// Connections told to go away per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000), extend("default" = 100))]
    pub evict_rate: Option<i32>,
    /// Spread the evictions over this period instead (never slower than `evictRate`);
    /// `0s` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "0s"))]
    pub period: Option<String>,
    /// Deadline of the whole drain, e.g. `60s`; the pod grace period is this plus a margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "60s"))]
    pub timeout: Option<String>,
    /// Clients told to go away wait a random time up to this before reconnecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), extend("default" = "2s"))]
    pub reconnect_jitter: Option<String>,
}

/// How a rollout replaces the pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.maxSurge) || (has(self.strategy) && self.strategy == 'Rolling')",
     "message": "rollout.maxSurge applies to strategy Rolling only (SurgeAll starts every new pod first)"}
]))]
pub struct RolloutSpec {
    /// `SurgeAll` (default): every new pod is up before the old ones drain, so each client
    /// moves once (under autoscaling at most up to `maxReplicas` pods in all). `Rolling`:
    /// `maxSurge` new pods at a time; a client can move once per batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "SurgeAll"))]
    pub strategy: Option<RolloutStrategy>,
    /// New pods started at a time with `Rolling` (number or percent); default 25%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// Seconds a new pod must be ready before old pods drain; default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600), extend("default" = 10))]
    pub min_ready_seconds: Option<i32>,
}

/// Rollout strategy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategy {
    /// Every new pod before any old pod drains.
    SurgeAll,
    /// `maxSurge` new pods at a time.
    Rolling,
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
    /// Fewest pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000), extend("default" = 2))]
    pub min_replicas: Option<i32>,
    /// Most pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000), extend("default" = 10))]
    pub max_replicas: Option<i32>,
    /// Average open connections per pod the autoscaler aims for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000), extend("default" = 1000))]
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
    /// Seconds of lower recommendations before scaling down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600), extend("default" = 300))]
    pub stabilization_window_seconds: Option<i32>,
    /// Pods removed per period at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000), extend("default" = 1))]
    pub pods_per_period: Option<i32>,
    /// Period length in seconds; default the pods' grace period (drain.timeout + 15 s), so
    /// one removal has finished draining before the next starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: Option<i32>,
}

/// PodDisruptionBudget; at most one of maxUnavailable and minAvailable.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.maxUnavailable) && has(self.minAvailable))",
     "message": "set maxUnavailable or minAvailable, not both"},
    {"rule": "!self.enabled || !has(self.maxUnavailable) || (string(self.maxUnavailable).endsWith('%') ? string(self.maxUnavailable) != '0%' : int(string(self.maxUnavailable)) > 0)",
     "message": "disruptionBudget.maxUnavailable must allow at least one pod down: 0 blocks node drains forever"}
]))]
pub struct DisruptionBudgetSpec {
    /// Create a PodDisruptionBudget; default true when this section is present.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods (or percent) that may be down at once; default 1 when neither is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Pods (or percent) that must stay up; below the replica floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
}
