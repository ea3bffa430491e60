//! `controller.kubernetes.io/pod-deletion-cost` from each gateway pod's open connections.
//!
//! When the HPA (or `kubectl scale`) removes pods, the ReplicaSet controller deletes the
//! pods with the lowest deletion cost first. Every connection on a removed pod has to
//! reconnect, so the cost of a pod is its connection count: the emptiest pod goes first.
//! The counts are the operator's one reading of the pods' `chatgateway_connections`
//! (`custom_metrics::readings`, the numbers the custom metrics API serves the HPA): this
//! pass reads no pod itself. Only ready pods of gateways running more than one pod are
//! ranked; a pod that could not be read keeps whatever cost it had, and stale readings
//! write nothing. Each annotation write is a pod update, so a cost is rewritten only when
//! it moved by more than a tenth (and more than ten connections). Kubernetes honours the
//! annotation from 1.22 (beta, on by default); older clusters ignore it.

use crate::custom_metrics::scrape::{Snapshot, Values};
use crate::error::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The annotation the ReplicaSet controller reads.
pub const ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Field manager of the annotation (server-side apply of that one field).
pub const MANAGER: &str = "chatgateway-operator-deletion-cost";
/// How often the costs are refreshed.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// The cost to write for a pod with `connections` open, or `None` when its `current`
/// annotation is close enough.
pub fn cost_update(current: Option<&str>, connections: u64) -> Option<i32> {
    let new = i32::try_from(connections).unwrap_or(i32::MAX);
    match current.and_then(|c| c.trim().parse::<i32>().ok()) {
        Some(old) => {
            let slack = (old.unsigned_abs() / 10).max(10);
            (old.abs_diff(new) > slack).then_some(new)
        }
        None => Some(new),
    }
}

/// Ready and not being deleted: the pods that serve connections.
fn serving(pod: &Pod) -> bool {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ready && pod.metadata.deletion_timestamp.is_none()
}

/// One cost to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The new cost.
    pub cost: i32,
}

/// The costs that moved, from a round of readings and the pods as last watched (their
/// readiness and current annotations), in the snapshot's order.
pub fn updates(snapshot: &Snapshot, pods: &Store<Pod>) -> Vec<Update> {
    let mut running: HashMap<(&str, &str), usize> = HashMap::new();
    for p in &snapshot.pods {
        *running.entry((&p.namespace, &p.gateway)).or_default() += 1;
    }
    snapshot
        .pods
        .iter()
        // One pod leaves nothing to choose between.
        .filter(|p| running[&(p.namespace.as_str(), p.gateway.as_str())] > 1)
        .filter_map(|p| {
            let open = p.connections?;
            let pod: Arc<Pod> = pods.get(&ObjectRef::new(&p.name).within(&p.namespace))?;
            if !serving(&pod) {
                return None;
            }
            let current = pod.annotations().get(ANNOTATION).map(String::as_str);
            Some(Update {
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
                cost: cost_update(current, open)?,
            })
        })
        .collect()
}

/// Writes `updates` (server-side apply of the one annotation); returns how many were
/// written. A pod gone since it was read is skipped, and the others still written.
pub async fn write(client: &Client, updates: &[Update]) -> Result<usize> {
    let params = PatchParams::apply(MANAGER).force();
    let mut written = 0;
    for u in updates {
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": u.pod, "annotations": {ANNOTATION: u.cost.to_string()}},
        });
        let pods = Api::<Pod>::namespaced(client.clone(), &u.namespace);
        match pods.patch(&u.pod, &params, &Patch::Apply(body)).await {
            Ok(_) => written += 1,
            // Gone since the reading: nothing to rank. An apply creates what does not
            // exist, so a pod deleted meanwhile is usually not a 404 but a create from the
            // bare annotation, which fails validation (422: a pod needs containers).
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_invalid() => {
                tracing::debug!(pod = %format!("{}/{}", u.namespace, u.pod), reason = %s.reason, "pod gone: no deletion cost written");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

/// Refreshes the costs every [`INTERVAL`] from the readings, until the task is aborted
/// (the end of the leader's term).
pub async fn run(client: Client, values: Values, pods: Store<Pod>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        let updates = updates(&values.current(), &pods);
        if let Err(e) = write(&client, &updates).await {
            tracing::warn!(error = %e, "updating pod deletion costs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom_metrics::scrape::PodSample;
    use crate::reconcile::tests::{context, invalid, not_found, serve, step};
    use crate::reconcile::ServedKinds;
    use http::Method;
    use k8s_openapi::jiff::Timestamp;
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    #[test]
    fn the_emptiest_pod_gets_the_lowest_cost_and_small_moves_are_not_written() {
        assert_eq!(cost_update(None, 120), Some(120));
        assert_eq!(cost_update(Some("garbage"), 3), Some(3));
        // Within max(10, 10 %) of the current cost: no pod update.
        assert_eq!(cost_update(Some("100"), 108), None);
        assert_eq!(cost_update(Some("5000"), 5400), None);
        assert_eq!(cost_update(Some("5000"), 5600), Some(5600));
        assert_eq!(cost_update(Some("100"), 0), Some(0));
        assert_eq!(cost_update(Some("0"), 9), None);
        assert_eq!(cost_update(None, u64::MAX), Some(i32::MAX));
        // The order the ReplicaSet controller sees is the order of the counts.
        let mut pods = [("a", 900u64), ("b", 12), ("c", 300)];
        pods.sort_by_key(|(_, n)| cost_update(None, *n));
        assert_eq!(pods.map(|(p, _)| p), ["b", "c", "a"]);
    }

    fn pod(name: &str, ready: bool, cost: Option<&str>, deleting: bool) -> Pod {
        let mut p = json!({"metadata": {"name": name, "namespace": "apps"},
            "status": {"podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if let Some(c) = cost {
            p["metadata"]["annotations"] = json!({ANNOTATION: c});
        }
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(p).expect("pod")
    }

    fn sample(gateway: &str, name: &str, connections: Option<u64>) -> PodSample {
        PodSample {
            namespace: "apps".into(),
            name: name.into(),
            gateway: gateway.into(),
            labels: Default::default(),
            connections,
            at: Timestamp::UNIX_EPOCH,
        }
    }

    /// A pod cache holding `pods`, as the watch would have filled it.
    fn store(pods: Vec<Pod>) -> Store<Pod> {
        let (reader, mut writer) = reflector::store::<Pod>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for p in pods {
            writer.apply_watcher_event(&watcher::Event::InitApply(p));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        reader
    }

    #[test]
    fn only_ready_read_pods_of_multi_pod_gateways_whose_cost_moved() {
        let snapshot = Snapshot {
            pods: vec![
                sample("chat", "chat-a", Some(250)),
                sample("chat", "chat-b", Some(250)),
                sample("chat", "chat-c", Some(7)),
                sample("chat", "chat-d", None),
                sample("chat", "chat-e", Some(40)),
                sample("chat", "chat-gone", Some(3)),
                sample("solo", "solo-a", Some(99)),
            ],
            ..Snapshot::default()
        };
        let pods = store(vec![
            pod("chat-a", true, None, false),
            pod("chat-b", true, Some("245"), false),
            pod("chat-c", false, None, false),
            pod("chat-d", true, Some("10"), false),
            pod("chat-e", true, None, true),
            pod("solo-a", true, None, false),
        ]);
        let got = updates(&snapshot, &pods);
        assert_eq!(
            got,
            [Update {
                namespace: "apps".into(),
                pod: "chat-a".into(),
                cost: 250
            }],
            "b is close enough, c not ready, d unread, e being deleted, gone unknown, solo alone"
        );
        // Stale readings (an empty snapshot) write nothing.
        assert!(updates(&Snapshot::default(), &pods).is_empty());
    }

    #[tokio::test]
    async fn a_pass_writes_the_annotation_alone_and_skips_pods_gone_since() {
        let (ctx, handle) = context(ServedKinds::ALL, false);
        let path = |pod: &str| format!("/api/v1/namespaces/apps/pods/{pod}");
        // chat-b is gone (404); chat-c was deleted meanwhile, so the apply tried to create
        // it and failed validation (422); chat-d is still written.
        let mut steps = vec![
            step(Method::PATCH, &path("chat-a")),
            not_found(Method::PATCH, &path("chat-b")),
            invalid(Method::PATCH, &path("chat-c")),
            step(Method::PATCH, &path("chat-d")),
        ];
        for s in &mut steps {
            s.apply_as = (MANAGER, true);
        }
        let server = serve(handle, steps);
        let update = |pod: &str, cost| Update {
            namespace: "apps".into(),
            pod: pod.into(),
            cost,
        };
        let all = ["chat-a", "chat-b", "chat-c", "chat-d"].map(|p| update(p, 250));
        let written = write(&ctx.client, &all).await.expect("pass");
        assert_eq!(written, 2);
        let seen = server.await.expect("server");
        assert_eq!(seen.len(), 4);
        assert_eq!(
            seen[0].1,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "chat-a", "annotations": {ANNOTATION: "250"}}})
        );
    }
}
