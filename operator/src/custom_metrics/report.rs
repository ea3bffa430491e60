//! What the leader tells users on the ChatGateway itself: `status.connections` (the
//! connections per pod the operator reads, i.e. what the HPA sees) and a Warning Event
//! when another provider owns the custom metrics API.
//!
//! The status is written with server-side apply under its own field manager, so it never
//! touches the fields the reconciler owns (conditions, replicas). It is written when the
//! numbers change (at most once per round) and refreshed every few minutes otherwise.

use super::apiservice::{Provider, Providers};
use super::scrape::{Snapshot, Values};
use crate::crd::{ChatGateway, ConnectionsStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use std::collections::HashSet;
use std::time::Duration;

/// Field manager of `status.connections` (not the reconciler's: see the module docs).
pub const STATUS_MANAGER: &str = "chatgateway-operator-metrics";
/// Unchanged numbers are re-written this often, so `observedAt` shows they are current.
pub const REFRESH: Duration = Duration::from_secs(300);

/// `status.connections` for a gateway from a snapshot.
pub fn connections(
    snapshot: &Snapshot,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> ConnectionsStatus {
    let s = snapshot.summary(namespace, name);
    let total = i64::try_from(s.total).unwrap_or(i64::MAX);
    ConnectionsStatus {
        per_pod: (s.read > 0).then(|| (total + i64::from(s.read) / 2) / i64::from(s.read)),
        total,
        pods_read: i32::try_from(s.read).unwrap_or(i32::MAX),
        pods_unread: i32::try_from(s.unread).unwrap_or(i32::MAX),
        observed_at: Some(Time(now)),
    }
}

/// Whether the live status must be rewritten to show `next`.
pub fn needs_write(
    live: Option<&ConnectionsStatus>,
    next: &ConnectionsStatus,
    now: Timestamp,
) -> bool {
    let Some(live) = live else {
        return true;
    };
    let same = ConnectionsStatus {
        observed_at: None,
        ..live.clone()
    } == ConnectionsStatus {
        observed_at: None,
        ..next.clone()
    };
    let old = live.observed_at.as_ref().is_none_or(|t| {
        now.duration_since(t.0) >= SignedDuration::try_from(REFRESH).unwrap_or(SignedDuration::MAX)
    });
    !same || old
}

/// Writes statuses and Events every `every` until dropped.
pub async fn run(
    client: Client,
    gateways: Store<ChatGateway>,
    values: Values,
    providers: Providers,
    recorder: Option<Recorder>,
    every: Duration,
) {
    let mut told: HashSet<(String, String)> = HashSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = values.current();
        let now = Timestamp::now();
        let others: Vec<String> = providers
            .get()
            .into_iter()
            .filter_map(|(name, p)| match p {
                Provider::Other(by) => Some(format!("{name} is served by {by}")),
                _ => None,
            })
            .collect();
        for cgw in gateways.state() {
            let (Some(ns), name) = (cgw.namespace(), cgw.name_any()) else {
                continue;
            };
            // Only gateways the last scrape knew: a brand-new one waits one round.
            if !snapshot
                .gateways
                .iter()
                .any(|g| g.namespace == ns && g.name == name)
            {
                continue;
            }
            let next = connections(&snapshot, &ns, &name, now);
            let live = cgw.status.as_ref().and_then(|s| s.connections.as_ref());
            if needs_write(live, &next, now) {
                if let Err(e) = write(&client, &ns, &name, &next).await {
                    tracing::debug!(gateway = %format!("{ns}/{name}"), error = %e, "writing status.connections");
                }
            }
            let autoscaled = cgw.spec.autoscaling.as_ref().is_some_and(|a| a.enabled);
            if let (true, false, Some(recorder)) = (autoscaled, others.is_empty(), &recorder) {
                let note = format!(
                    "{}: the HPA reads chatgateway_connections from that provider, not from the operator \
                     (its rules must expose the metric; docs/operations.md, Autoscaling)",
                    others.join("; ")
                );
                let key = (cgw.uid().unwrap_or_default(), note.clone());
                if !told.contains(&key) {
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "CustomMetricsOtherProvider".into(),
                        note: Some(note),
                        action: "Autoscaling".into(),
                        secondary: None,
                    };
                    if recorder.publish(&event, &cgw.object_ref(&())).await.is_ok() {
                        told.insert(key);
                    }
                }
            }
        }
    }
}

/// Applies `status.connections` of one gateway under [`STATUS_MANAGER`].
pub async fn write(
    client: &Client,
    ns: &str,
    name: &str,
    connections: &ConnectionsStatus,
) -> kube::Result<()> {
    let body = serde_json::json!({
        "apiVersion": ChatGateway::api_version(&()),
        "kind": ChatGateway::kind(&()),
        "status": {"connections": connections},
    });
    Api::<ChatGateway>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom_metrics::scrape::{GatewaySample, PodSample};
    use std::collections::BTreeMap;

    fn snapshot(values: &[Option<u64>]) -> Snapshot {
        Snapshot {
            pods: values
                .iter()
                .enumerate()
                .map(|(i, v)| PodSample {
                    namespace: "apps".into(),
                    name: format!("chat-{i}"),
                    gateway: "chat".into(),
                    labels: BTreeMap::new(),
                    connections: *v,
                    at: Timestamp::UNIX_EPOCH,
                })
                .collect(),
            gateways: vec![GatewaySample {
                namespace: "apps".into(),
                name: "chat".into(),
                labels: BTreeMap::new(),
            }],
            at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn per_pod_is_the_average_over_the_pods_read() {
        let now = Timestamp::UNIX_EPOCH;
        let c = connections(&snapshot(&[Some(100), Some(51), None]), "apps", "chat", now);
        assert_eq!(
            (c.per_pod, c.total, c.pods_read, c.pods_unread),
            (Some(76), 151, 2, 1)
        );
        let none = connections(&snapshot(&[None]), "apps", "chat", now);
        assert_eq!(
            (none.per_pod, none.total, none.pods_unread),
            (None, 0, 1),
            "no pod read: no average, not 0"
        );
    }

    #[test]
    fn rewritten_on_change_or_when_old() {
        let t0 = Timestamp::UNIX_EPOCH;
        let a = connections(&snapshot(&[Some(3)]), "apps", "chat", t0);
        assert!(needs_write(None, &a, t0));
        let soon = t0 + SignedDuration::from_secs(30);
        let same_later = connections(&snapshot(&[Some(3)]), "apps", "chat", soon);
        assert!(!needs_write(Some(&a), &same_later, soon));
        let changed = connections(&snapshot(&[Some(4)]), "apps", "chat", soon);
        assert!(needs_write(Some(&a), &changed, soon));
        let much_later = t0 + SignedDuration::from_secs(301);
        assert!(needs_write(Some(&a), &same_later, much_later));
    }
}
