//! Conditions from observations.

use super::*;
use crate::builders::testing::{cgw, MINIMAL};
use serde_json::json;

fn seen(desired: i32, replicas: i32, ready: i32, updated: i32) -> Observed {
    Observed {
        desired: Some(desired),
        replicas,
        ready,
        available: ready,
        updated,
        deployment_current: true,
        problems: Vec::new(),
    }
}

fn get<'a>(s: &'a ChatGatewayStatus, type_: &str) -> Option<(&'a str, &'a str)> {
    condition_status(s, type_).map(|c| (c.status.as_str(), c.reason.as_str()))
}

#[test]
fn ready_when_every_pod_is_ready_and_updated() {
    let s = desired(&cgw(MINIMAL), &seen(2, 2, 2, 2), "a=b");
    assert_eq!(get(&s, READY), Some(("True", "AllPodsReady")));
    assert_eq!(get(&s, AVAILABLE), Some(("True", "PodsAvailable")));
    assert_eq!(get(&s, PROGRESSING), Some(("False", "RolloutComplete")));
    assert_eq!(get(&s, RECONCILED), Some(("True", "ReconcileSucceeded")));
    assert_eq!(get(&s, DEGRADED), Some(("False", "AsExpected")));
    assert_eq!(
        (s.observed_generation, s.replicas, s.ready_replicas),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(s.selector.as_deref(), Some("a=b"));
    let types: Vec<_> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, [READY, AVAILABLE, PROGRESSING, RECONCILED, DEGRADED]);
}

#[test]
fn rolling_out_and_problems() {
    let mut o = seen(3, 4, 3, 1);
    o.problem("KindNotServed", "no policy/v1".into());
    o.problem("AutoscalerInactive", "no metric".into());
    let s = desired(&cgw(MINIMAL), &o, "a=b");
    assert_eq!(get(&s, READY), Some(("False", "PodsNotReady")));
    assert_eq!(get(&s, AVAILABLE), Some(("True", "PodsAvailable")));
    assert_eq!(get(&s, PROGRESSING), Some(("True", "RollingOut")));
    assert_eq!(get(&s, DEGRADED), Some(("True", "KindNotServed")));
    let message = &condition_status(&s, DEGRADED).expect("degraded").message;
    assert_eq!(message, "no policy/v1; no metric");
}

#[test]
fn nothing_serving_is_not_available() {
    let s = desired(&cgw(MINIMAL), &seen(2, 2, 0, 2), "a=b");
    assert_eq!(get(&s, AVAILABLE), Some(("False", "NoPodsAvailable")));
    let s = desired(&cgw(MINIMAL), &seen(0, 0, 0, 0), "a=b");
    assert_eq!(get(&s, AVAILABLE), Some(("False", "ScaledToZero")));
    assert_eq!(get(&s, READY), Some(("False", "ScaledToZero")));
}

#[test]
fn children_conditions_degrade() {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "chat", "generation": 3},
        "spec": {"replicas": 2, "selector": {}, "template": {}},
        "status": {"observedGeneration": 3, "replicas": 2, "readyReplicas": 1,
                   "availableReplicas": 1, "updatedReplicas": 2,
                   "conditions": [
                       {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet \"chat-1\" has timed out progressing."},
                       {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]},
    }))
    .expect("deployment");
    let mut o = Observed::from_deployment(&d);
    assert_eq!(o.available, 1);
    let hpa_status = json!({"conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "ok"},
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
         "message": "unable to get metric chatgateway_connections"}]});
    o.hpa_conditions(&ChildCondition::list(Some(&hpa_status)));
    let s = desired(&cgw(MINIMAL), &o, "a=b");
    assert_eq!(
        get(&s, DEGRADED),
        Some(("True", "ProgressDeadlineExceeded"))
    );
    let message = &condition_status(&s, DEGRADED).expect("degraded").message;
    assert!(message.contains("timed out progressing"), "{message}");
    assert!(
        message.contains("FailedGetPodsMetric: unable to get metric chatgateway_connections"),
        "{message}"
    );
    assert_eq!(get(&s, AVAILABLE), Some(("True", "PodsAvailable")));
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
fn a_failure_keeps_what_was_said_about_the_pods() {
    let mut c = cgw(MINIMAL);
    c.status = Some(desired(&c, &seen(2, 2, 2, 2), "a=b"));
    c.metadata.generation = Some(2);
    let s = failed(&c, "ApiError", "etcd is on fire", "a=b");
    assert_eq!(get(&s, READY), Some(("True", "AllPodsReady")));
    assert_eq!(get(&s, AVAILABLE), Some(("True", "PodsAvailable")));
    assert_eq!(get(&s, RECONCILED), Some(("False", "ApiError")));
    assert_eq!(get(&s, DEGRADED), Some(("True", "ApiError")));
    // The kept conditions still name the generation they describe.
    let ready = condition_status(&s, READY).expect("ready");
    assert_eq!(ready.observed_generation, Some(1));
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!((s.replicas, s.ready_replicas), (Some(2), Some(2)));
}

#[test]
fn a_first_failure_says_unknown_about_the_pods() {
    let s = failed(&cgw(MINIMAL), "SecretNotFound", "secret x", "a=b");
    assert_eq!(get(&s, READY), Some(("Unknown", "NotReconciled")));
    assert_eq!(get(&s, AVAILABLE), Some(("Unknown", "NotReconciled")));
    assert_eq!(get(&s, DEGRADED), Some(("True", "SecretNotFound")));
    assert_eq!(get(&s, RECONCILED), Some(("False", "SecretNotFound")));
}

#[test]
fn rolled_out_once_every_pod_is_of_the_current_template() {
    let seen = |current, desired, replicas, updated| Observed {
        desired,
        replicas,
        updated,
        deployment_current: current,
        ..Observed::default()
    };
    assert!(seen(true, Some(3), 3, 3).rolled_out());
    assert!(
        !seen(false, Some(3), 3, 3).rolled_out(),
        "template not seen yet"
    );
    assert!(!seen(true, Some(3), 4, 3).rolled_out(), "an old pod left");
    assert!(
        !seen(true, Some(3), 2, 2).rolled_out(),
        "not all new pods yet"
    );
    assert!(seen(true, None, 2, 2).rolled_out(), "the HPA's count");
}
