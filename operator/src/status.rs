//! Status of a ChatGateway: conditions computed from what the reconcile saw.
//!
//! `Reconciled` says whether the last apply worked; `Available` whether gateways serve;
//! `Ready` whether every pod runs the current spec and is ready; `Progressing` whether a
//! rollout is under way; `Degraded` whether something the spec asks for cannot be done,
//! including what the children say about themselves (an HPA that cannot read its metric,
//! a Deployment past its progress deadline). A failed reconcile says nothing new about the
//! pods, so it changes only `Reconciled` and `Degraded`: the old pods keep serving and
//! `Available`/`Ready` keep saying so.

use crate::crd::{ChatGateway, ChatGatewayStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition: every desired pod runs the current spec and is ready (the printer column).
pub const READY: &str = "Ready";
/// Condition: at least one gateway pod serves.
pub const AVAILABLE: &str = "Available";
/// Condition: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition: the last reconcile applied every child.
pub const RECONCILED: &str = "Reconciled";
/// Condition: something the spec asks for cannot be done.
pub const DEGRADED: &str = "Degraded";

/// What a reconcile learned, reduced to what the status shows.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Pods the Deployment wants (None when the HPA owns the count and has not set it).
    pub desired: Option<i32>,
    /// Pods that exist.
    pub replicas: i32,
    /// Pods passing readiness.
    pub ready: i32,
    /// Pods ready for at least `minReadySeconds`.
    pub available: i32,
    /// Pods on the newest template.
    pub updated: i32,
    /// Whether the Deployment controller has seen the newest Deployment spec.
    pub deployment_current: bool,
    /// Reasons and messages of what cannot be done (Degraded=True), first one wins the reason.
    pub problems: Vec<(String, String)>,
}

/// A child's own condition, as the reconcile read it from the child's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildCondition {
    /// Condition type, e.g. `ScalingActive`.
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Reason, e.g. `FailedGetPodsMetric`.
    pub reason: String,
    /// Message.
    pub message: String,
}

impl ChildCondition {
    /// The conditions of a child's status (`status.conditions`), from its JSON.
    pub fn list(status: Option<&serde_json::Value>) -> Vec<ChildCondition> {
        let text = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
        status
            .and_then(|s| s["conditions"].as_array())
            .into_iter()
            .flatten()
            .map(|c| ChildCondition {
                type_: text(c, "type"),
                status: text(c, "status"),
                reason: text(c, "reason"),
                message: text(c, "message"),
            })
            .collect()
    }
}

impl Observed {
    /// Reads the counts and the Deployment's own conditions from an applied Deployment.
    pub fn from_deployment(d: &Deployment) -> Observed {
        let status = d.status.clone().unwrap_or_default();
        let mut seen = Observed {
            desired: d.spec.as_ref().and_then(|s| s.replicas),
            replicas: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            deployment_current: status.observed_generation.is_some()
                && status.observed_generation >= d.metadata.generation,
            problems: Vec::new(),
        };
        for c in status.conditions.iter().flatten() {
            let message = c.message.clone().unwrap_or_default();
            let reason = c.reason.clone().unwrap_or_default();
            if c.type_ == "Progressing"
                && c.status == "False"
                && reason == "ProgressDeadlineExceeded"
            {
                seen.problem("ProgressDeadlineExceeded", format!("Deployment: {message}"));
            }
            if c.type_ == "ReplicaFailure" && c.status == "True" {
                seen.problem("ReplicaFailure", format!("Deployment: {reason}: {message}"));
            }
        }
        seen
    }

    /// Whether the Deployment has rolled out: its controller saw the current template, and
    /// every pod it counts (as many as it wants, or the HPA's count) is of that template.
    pub fn rolled_out(&self) -> bool {
        let desired = self.desired.unwrap_or(self.replicas);
        self.deployment_current && self.updated >= desired && self.replicas == self.updated
    }

    /// Records something the spec asks for that cannot be done.
    pub fn problem(&mut self, reason: &str, message: String) {
        self.problems.push((reason.to_string(), message));
    }

    /// Degrades on an HPA that cannot scale or cannot read its metrics.
    pub fn hpa_conditions(&mut self, conditions: &[ChildCondition]) {
        for c in conditions.iter().filter(|c| c.status == "False") {
            match c.type_.as_str() {
                "ScalingActive" => self.problem(
                    "AutoscalerInactive",
                    format!("HorizontalPodAutoscaler: {}: {}", c.reason, c.message),
                ),
                "AbleToScale" => self.problem(
                    "AutoscalerUnableToScale",
                    format!("HorizontalPodAutoscaler: {}: {}", c.reason, c.message),
                ),
                _ => {}
            }
        }
    }
}

/// The status after a successful reconcile; conditions keep their transition time while
/// their status holds.
pub fn desired(cgw: &ChatGateway, seen: &Observed, selector: &str) -> ChatGatewayStatus {
    let old = cgw.status.clone().unwrap_or_default();
    let generation = cgw.metadata.generation;
    let desired = seen.desired.unwrap_or(seen.replicas);
    let rolled_out = seen.rolled_out();
    let ready = seen.ready >= desired && desired > 0 && rolled_out;
    let pods = format!("{}/{} pods ready", seen.ready, desired);
    let (ready_reason, ready_msg) = match (ready, desired) {
        (true, _) => ("AllPodsReady", pods),
        (false, 0) => ("ScaledToZero", "no pods requested".to_string()),
        (false, _) => ("PodsNotReady", pods),
    };
    let (available_status, available_reason, available_msg) = match (seen.available, desired) {
        (0, 0) => ("False", "ScaledToZero", "no pods requested".to_string()),
        (0, _) => (
            "False",
            "NoPodsAvailable",
            "no gateway pod serves".to_string(),
        ),
        (n, _) => ("True", "PodsAvailable", format!("{n} gateway pods serve")),
    };
    let (prog_status, prog_reason, prog_msg) = if rolled_out {
        (
            "False",
            "RolloutComplete",
            "all pods run the current spec".to_string(),
        )
    } else {
        (
            "True",
            "RollingOut",
            format!("{}/{} pods updated", seen.updated, desired),
        )
    };
    let (deg_status, deg_reason, deg_msg) = match seen.problems.first() {
        Some((reason, _)) => {
            let all: Vec<_> = seen.problems.iter().map(|(_, m)| m.as_str()).collect();
            ("True", reason.as_str(), all.join("; "))
        }
        None => (
            "False",
            "AsExpected",
            "every child is applied and healthy".to_string(),
        ),
    };
    let c = |type_, status, reason, message| {
        condition(&old, generation, type_, status, reason, message)
    };
    ChatGatewayStatus {
        observed_generation: generation,
        conditions: vec![
            c(
                READY,
                if ready { "True" } else { "False" },
                ready_reason,
                ready_msg,
            ),
            c(AVAILABLE, available_status, available_reason, available_msg),
            c(PROGRESSING, prog_status, prog_reason, prog_msg),
            c(
                RECONCILED,
                "True",
                "ReconcileSucceeded",
                "every child is applied".to_string(),
            ),
            c(DEGRADED, deg_status, deg_reason, deg_msg),
        ],
        replicas: Some(seen.replicas),
        ready_replicas: Some(seen.ready),
        selector: Some(selector.to_string()),
        connections: None,
    }
}

/// The status after a failed reconcile: `Reconciled=False` and `Degraded=True` with the
/// error; what the status said about the pods stays (`Unknown` if it never said anything).
pub fn failed(cgw: &ChatGateway, reason: &str, message: &str, selector: &str) -> ChatGatewayStatus {
    let old = cgw.status.clone().unwrap_or_default();
    let generation = cgw.metadata.generation;
    let kept = |type_: &str| {
        old.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .cloned()
            .unwrap_or_else(|| {
                condition(
                    &old,
                    generation,
                    type_,
                    "Unknown",
                    "NotReconciled",
                    "no reconcile has succeeded yet".to_string(),
                )
            })
    };
    let c = |type_, status| condition(&old, generation, type_, status, reason, message.to_string());
    ChatGatewayStatus {
        observed_generation: generation,
        conditions: vec![
            kept(READY),
            kept(AVAILABLE),
            kept(PROGRESSING),
            c(RECONCILED, "False"),
            c(DEGRADED, "True"),
        ],
        replicas: old.replicas,
        ready_replicas: old.ready_replicas,
        selector: Some(selector.to_string()),
        connections: None,
    }
}

fn condition(
    old: &ChatGatewayStatus,
    generation: Option<i64>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> Condition {
    let previous = old.conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Status of the condition `type_`, if present.
pub fn condition_status<'a>(status: &'a ChatGatewayStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
