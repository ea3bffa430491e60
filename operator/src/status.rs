//! Status of a ChatGateway: conditions computed from what the reconcile saw.

use crate::crd::{ChatGateway, ChatGatewayStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition: all desired pods are ready.
pub const READY: &str = "Ready";
/// Condition: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";
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
    /// Pods on the newest template.
    pub updated: i32,
    /// Whether the Deployment controller has seen the newest Deployment spec.
    pub deployment_current: bool,
    /// Reason and message when the spec cannot be fully honoured (Degraded=True).
    pub problem: Option<(String, String)>,
}

impl Observed {
    /// Reads the counts from an applied Deployment.
    pub fn from_deployment(d: &Deployment) -> Observed {
        let status = d.status.clone().unwrap_or_default();
        Observed {
            desired: d.spec.as_ref().and_then(|s| s.replicas),
            replicas: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            deployment_current: status.observed_generation.is_some()
                && status.observed_generation >= d.metadata.generation,
            problem: None,
        }
    }
}

/// The status to write: conditions keep their transition time while their status holds.
pub fn desired(cgw: &ChatGateway, seen: &Observed, selector: &str) -> ChatGatewayStatus {
    let old = cgw.status.clone().unwrap_or_default();
    let generation = cgw.metadata.generation;
    let desired = seen.desired.unwrap_or(seen.replicas);
    let rolled_out =
        seen.deployment_current && seen.updated >= desired && seen.replicas == seen.updated;
    let ready = seen.ready >= desired && desired > 0 && rolled_out;
    let (ready_reason, ready_msg) = if ready {
        (
            "AllPodsReady",
            format!("{}/{} pods ready", seen.ready, desired),
        )
    } else if desired == 0 {
        ("ScaledToZero", "no pods requested".to_string())
    } else {
        (
            "PodsNotReady",
            format!("{}/{} pods ready", seen.ready, desired),
        )
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
    let (deg_status, deg_reason, deg_msg) = match &seen.problem {
        Some((reason, message)) => ("True", reason.as_str(), message.clone()),
        None => ("False", "AsExpected", "every child is applied".to_string()),
    };
    let conditions = vec![
        condition(
            &old,
            generation,
            READY,
            if ready { "True" } else { "False" },
            ready_reason,
            ready_msg,
        ),
        condition(
            &old,
            generation,
            PROGRESSING,
            prog_status,
            prog_reason,
            prog_msg,
        ),
        condition(&old, generation, DEGRADED, deg_status, deg_reason, deg_msg),
    ];
    ChatGatewayStatus {
        observed_generation: generation,
        conditions,
        replicas: Some(seen.replicas),
        ready_replicas: Some(seen.ready),
        selector: Some(selector.to_string()),
        connections: None,
    }
}

/// Status after a failed reconcile: Degraded with the error, counts as last seen.
pub fn failed(cgw: &ChatGateway, reason: &str, message: &str, selector: &str) -> ChatGatewayStatus {
    let old = cgw.status.clone().unwrap_or_default();
    let generation = cgw.metadata.generation;
    let conditions = vec![
        condition(
            &old,
            generation,
            READY,
            "False",
            reason,
            message.to_string(),
        ),
        condition(
            &old,
            generation,
            PROGRESSING,
            "False",
            reason,
            message.to_string(),
        ),
        condition(
            &old,
            generation,
            DEGRADED,
            "True",
            reason,
            message.to_string(),
        ),
    ];
    ChatGatewayStatus {
        observed_generation: generation,
        conditions,
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
mod tests {
    use super::*;
    use crate::builders::testing::{cgw, MINIMAL};

    fn seen(desired: i32, replicas: i32, ready: i32, updated: i32) -> Observed {
        Observed {
            desired: Some(desired),
            replicas,
            ready,
            updated,
            deployment_current: true,
            problem: None,
        }
    }

    #[test]
    fn ready_when_every_pod_is_ready_and_updated() {
        let s = desired(&cgw(MINIMAL), &seen(2, 2, 2, 2), "a=b");
        let get = |t| condition_status(&s, t).map(|c| (c.status.as_str(), c.reason.as_str()));
        assert_eq!(get(READY), Some(("True", "AllPodsReady")));
        assert_eq!(get(PROGRESSING), Some(("False", "RolloutComplete")));
        assert_eq!(get(DEGRADED), Some(("False", "AsExpected")));
        assert_eq!(
            (s.observed_generation, s.replicas, s.ready_replicas),
            (Some(1), Some(2), Some(2))
        );
        assert_eq!(s.selector.as_deref(), Some("a=b"));
    }

    #[test]
    fn rolling_out_and_problems() {
        let mut o = seen(3, 4, 3, 1);
        o.problem = Some(("KindNotServed".into(), "no policy/v1".into()));
        let s = desired(&cgw(MINIMAL), &o, "a=b");
        let get = |t| condition_status(&s, t).map(|c| (c.status.as_str(), c.reason.as_str()));
        assert_eq!(get(READY), Some(("False", "PodsNotReady")));
        assert_eq!(get(PROGRESSING), Some(("True", "RollingOut")));
        assert_eq!(get(DEGRADED), Some(("True", "KindNotServed")));
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let mut c = cgw(MINIMAL);
        let first = desired(&c, &seen(2, 2, 2, 2), "a=b");
        let mut old = first.clone();
        old.conditions[0].last_transition_time = Time(Timestamp::UNIX_EPOCH);
        c.status = Some(old);
        let again = desired(&c, &seen(2, 2, 2, 2), "a=b");
        assert_eq!(
            again.conditions[0].last_transition_time,
            Time(Timestamp::UNIX_EPOCH)
        );
        let changed = desired(&c, &seen(2, 2, 1, 2), "a=b");
        assert_ne!(
            changed.conditions[0].last_transition_time,
            Time(Timestamp::UNIX_EPOCH)
        );
    }

    #[test]
    fn failure_is_degraded_with_the_reason() {
        let s = failed(&cgw(MINIMAL), "SecretNotFound", "secret x", "a=b");
        let d = condition_status(&s, DEGRADED).expect("degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "SecretNotFound")
        );
    }
}
