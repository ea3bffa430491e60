//! The documents and metric lists the HPA reads, for both API versions.

use super::*;
use crate::custom_metrics::scrape::{GatewaySample, PodSample, Snapshot};
use k8s_openapi::jiff::Timestamp;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, name: &str, gateway: &str, connections: Option<u64>) -> PodSample {
    PodSample {
        namespace: ns.into(),
        name: name.into(),
        gateway: gateway.into(),
        labels: labels(&[
            ("app.kubernetes.io/name", "chat-gateway"),
            ("app.kubernetes.io/instance", gateway),
        ]),
        connections,
        at: "2030-01-02T03:04:05Z".parse().expect("time"),
    }
}

fn gw(ns: &str, name: &str) -> GatewaySample {
    GatewaySample {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(&[("tier", "edge")]),
    }
}

/// Two gateways in `apps` (one pod of `chat` cannot be read), one in `other`.
fn snapshot() -> Snapshot {
    Snapshot {
        pods: vec![
            pod("apps", "chat-1", "chat", Some(120)),
            pod("apps", "chat-2", "chat", Some(80)),
            pod("apps", "chat-3", "chat", None),
            pod("apps", "side-1", "side", Some(7)),
            pod("other", "chat-1", "chat", Some(999)),
        ],
        gateways: vec![gw("apps", "chat"), gw("apps", "side"), gw("other", "chat")],
        at: "2030-01-02T03:04:06Z".parse::<Timestamp>().expect("time"),
    }
}

const BASE: &str = "/apis/custom.metrics.k8s.io";

fn get(path: &str, query: Option<&str>) -> Reply {
    respond(path, query, &snapshot())
}

fn names(reply: &Reply) -> Vec<(String, String)> {
    reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {}", reply.body))
        .iter()
        .map(|i| {
            (
                i["describedObject"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                i["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn discovery_documents_for_both_versions() {
    for version in VERSIONS {
        let reply = get(&format!("{BASE}/{version}"), None);
        assert_eq!(reply.status, 200);
        let doc = &reply.body;
        assert_eq!(doc["kind"], "APIResourceList");
        assert_eq!(
            doc["groupVersion"],
            format!("custom.metrics.k8s.io/{version}")
        );
        let resources: Vec<_> = doc["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| {
                assert_eq!(r["namespaced"], true);
                assert_eq!(r["kind"], "MetricValueList");
                assert_eq!(r["verbs"], json!(["get"]));
                r["name"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        assert_eq!(
            resources,
            [
                "pods/chatgateway_connections",
                "chatgateways.chatgateway.io/chatgateway_connections"
            ]
        );
        // A trailing slash is the same document.
        assert_eq!(get(&format!("{BASE}/{version}/"), None), reply);
    }
    assert_eq!(get(&format!("{BASE}/v1"), None).status, 404);
    assert_eq!(get("/apis/metrics.k8s.io/v1beta1", None).status, 404);
}

#[test]
fn pods_of_a_label_selector_in_v1beta2_the_form_the_hpa_asks_for() {
    let reply = get(
        &format!("{BASE}/v1beta2/namespaces/apps/pods/%2A/chatgateway_connections"),
        Some("labelSelector=app.kubernetes.io%2Finstance%3Dchat%2Capp.kubernetes.io%2Fname%3Dchat-gateway"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["kind"], "MetricValueList");
    assert_eq!(reply.body["apiVersion"], "custom.metrics.k8s.io/v1beta2");
    // chat-3 could not be read: left out, not 0. side-1 and the other namespace do not match.
    assert_eq!(
        names(&reply),
        [
            ("chat-1".into(), "120".into()),
            ("chat-2".into(), "80".into())
        ]
    );
    let item = &reply.body["items"][0];
    assert_eq!(item["metric"], json!({"name": "chatgateway_connections"}));
    assert_eq!(
        item["describedObject"],
        json!({"kind": "Pod", "namespace": "apps", "name": "chat-1", "apiVersion": "v1"})
    );
    assert_eq!(item["timestamp"], "2030-01-02T03:04:05Z");
}

#[test]
fn pods_in_v1beta1_carry_metric_name() {
    let reply = get(
        &format!("{BASE}/v1beta1/namespaces/apps/pods/*/chatgateway_connections"),
        Some("labelSelector=app.kubernetes.io/instance+in+(side)"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(names(&reply), [("side-1".into(), "7".into())]);
    let item = &reply.body["items"][0];
    assert_eq!(item["metricName"], "chatgateway_connections");
    assert!(item.get("metric").is_none());
    // No selector: every pod read in the namespace.
    let all = get(
        &format!("{BASE}/v1beta1/namespaces/apps/pods/*/chatgateway_connections"),
        None,
    );
    assert_eq!(names(&all).len(), 3);
}

#[test]
fn one_pod_by_name_and_an_unread_pod_is_not_found_rather_than_zero() {
    let ok = get(
        &format!("{BASE}/v1beta2/namespaces/apps/pods/chat-2/chatgateway_connections"),
        None,
    );
    assert_eq!(names(&ok), [("chat-2".into(), "80".into())]);
    let unread = get(
        &format!("{BASE}/v1beta2/namespaces/apps/pods/chat-3/chatgateway_connections"),
        None,
    );
    assert_eq!(unread.status, 404, "{}", unread.body);
    assert_eq!(unread.body["reason"], "NotFound");
}

#[test]
fn the_object_total_on_the_chatgateway() {
    let reply = get(
        &format!("{BASE}/v1beta2/namespaces/apps/chatgateways.chatgateway.io/side/chatgateway_connections"),
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(names(&reply), [("side".into(), "7".into())]);
    assert_eq!(
        reply.body["items"][0]["describedObject"],
        json!({"kind": "ChatGateway", "namespace": "apps", "name": "side",
               "apiVersion": ChatGateway::api_version(&())})
    );
    // `chat` has a pod that could not be read: its total is unknown, not an undercount.
    let partial = get(
        &format!("{BASE}/v1beta1/namespaces/apps/chatgateways.chatgateway.io/chat/chatgateway_connections"),
        None,
    );
    assert_eq!(partial.status, 404, "{}", partial.body);
    // Complete once every pod answers.
    let mut s = snapshot();
    s.pods.retain(|p| p.connections.is_some());
    let full = respond(
        &format!("{BASE}/v1beta1/namespaces/apps/chatgateways.chatgateway.io/chat/chatgateway_connections"),
        None,
        &s,
    );
    assert_eq!(names(&full), [("chat".into(), "200".into())]);
    assert_eq!(full.body["items"][0]["timestamp"], "2030-01-02T03:04:06Z");
    // All gateways of a label in the namespace.
    let all = respond(
        &format!(
            "{BASE}/v1beta2/namespaces/apps/chatgateways.chatgateway.io/*/chatgateway_connections"
        ),
        Some("labelSelector=tier%3Dedge"),
        &s,
    );
    assert_eq!(
        names(&all),
        [("chat".into(), "200".into()), ("side".into(), "7".into())]
    );
}

#[test]
fn unknown_metrics_resources_and_bad_selectors() {
    let unknown = get(
        &format!("{BASE}/v1beta2/namespaces/apps/pods/*/http_requests"),
        None,
    );
    assert_eq!(unknown.status, 404);
    assert!(unknown.body["message"]
        .as_str()
        .is_some_and(|m| m.contains("http_requests")));
    let resource = get(
        &format!("{BASE}/v1beta2/namespaces/apps/deployments.apps/*/chatgateway_connections"),
        None,
    );
    assert_eq!(resource.status, 404);
    let root = get(
        &format!("{BASE}/v1beta2/nodes/*/chatgateway_connections"),
        None,
    );
    assert_eq!(root.status, 404);
    let bad = get(
        &format!("{BASE}/v1beta2/namespaces/apps/pods/*/chatgateway_connections"),
        Some("labelSelector=a+in+1"),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["reason"], "BadRequest");
    let escape = get(
        &format!("{BASE}/v1beta2/namespaces/apps/pods/%ZZ/chatgateway_connections"),
        None,
    );
    assert_eq!(escape.status, 400);
}

#[test]
fn a_metric_selector_the_unlabelled_metric_cannot_match_empties_the_list() {
    let path = format!("{BASE}/v1beta2/namespaces/apps/pods/*/chatgateway_connections");
    let none = get(&path, Some("metricLabelSelector=route%3Dchat"));
    assert_eq!(names(&none), Vec::<(String, String)>::new());
    let all = get(&path, Some("metricLabelSelector=%21route"));
    assert_eq!(names(&all).len(), 3);
}

#[test]
fn an_empty_snapshot_answers_empty_lists() {
    let reply = respond(
        &format!("{BASE}/v1beta2/namespaces/apps/pods/*/chatgateway_connections"),
        None,
        &Snapshot::default(),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["items"], json!([]));
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("%2A").as_deref(), Some("*"));
    assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
    assert_eq!(percent_decode("%"), None);
    assert_eq!(percent_decode("%G1"), None);
    assert_eq!(percent_decode("%FF"), None, "not UTF-8");
}
