//! Targets, parsing, totals and a real gateway read over HTTP.

use super::*;
use serde_json::json;

fn gateway(ns: &str, name: &str) -> Arc<ChatGateway> {
    Arc::new(
        serde_json::from_value(
            json!({"apiVersion": "chatgateway.io/v1alpha1", "kind": "ChatGateway",
            "metadata": {"name": name, "namespace": ns, "labels": {"team": "chat"}}, "spec": {}}),
        )
        .expect("gateway"),
    )
}

fn pod(
    ns: &str,
    name: &str,
    instance: &str,
    phase: &str,
    ip: Option<&str>,
    port: Option<i32>,
) -> Arc<Pod> {
    let ports = port
        .map(|p| json!([{"name": "http", "containerPort": p}]))
        .unwrap_or(json!([]));
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns,
            "labels": {"app.kubernetes.io/name": "chat-gateway", "app.kubernetes.io/instance": instance}},
            "spec": {"containers": [{"name": "gateway", "ports": ports}]},
            "status": {"phase": phase, "podIP": ip}}))
        .expect("pod"),
    )
}

#[test]
fn targets_are_running_pods_of_known_gateways_on_their_http_port() {
    let gateways = [gateway("apps", "chat")];
    let pods = [
        pod(
            "apps",
            "chat-a",
            "chat",
            "Running",
            Some("10.0.0.5"),
            Some(9000),
        ),
        pod("apps", "chat-b", "chat", "Running", Some("10.0.0.6"), None),
        pod("apps", "chat-pending", "chat", "Pending", None, Some(8080)),
        pod(
            "apps",
            "other-a",
            "other",
            "Running",
            Some("10.0.0.7"),
            None,
        ),
        pod(
            "elsewhere",
            "chat-x",
            "chat",
            "Running",
            Some("10.0.0.8"),
            None,
        ),
    ];
    let (targets, known) = targets(&pods, &gateways, Timestamp::UNIX_EPOCH);
    let got: Vec<_> = targets
        .iter()
        .map(|t| (t.sample.name.as_str(), t.addr.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            ("chat-a", "10.0.0.5:9000".to_string()),
            ("chat-b", "10.0.0.6:8080".to_string())
        ]
    );
    assert_eq!(known.len(), 1);
    assert_eq!(
        known[0].labels.get("team").map(String::as_str),
        Some("chat")
    );
}

#[test]
fn parses_the_unlabelled_gauge_only() {
    let text = "# HELP chatgateway_connections open\n# TYPE chatgateway_connections gauge\n\
                chatgateway_connections_accepted_total 9\nchatgateway_connections 42\n";
    assert_eq!(parse_connections(text), Some(42));
    assert_eq!(
        parse_connections("chatgateway_connections{} 3 1700000000000\n"),
        Some(3)
    );
    for bad in [
        "",
        "chatgateway_connections -1\n",
        "chatgateway_connections NaN\n",
        "chatgateway_connections 1.5\n",
        "chatgateway_connections\n",
        "chatgateway_connections_accepted_total 4\n",
    ] {
        assert_eq!(parse_connections(bad), None, "{bad:?}");
    }
}

#[test]
fn totals_need_every_pod_and_stale_snapshots_are_not_served() {
    let sample = |name: &str, n: Option<u64>| PodSample {
        namespace: "apps".into(),
        name: name.into(),
        gateway: "chat".into(),
        labels: BTreeMap::new(),
        connections: n,
        at: Timestamp::UNIX_EPOCH,
    };
    let mut s = Snapshot {
        pods: vec![sample("a", Some(3)), sample("b", None)],
        gateways: vec![GatewaySample {
            namespace: "apps".into(),
            name: "chat".into(),
            labels: BTreeMap::new(),
        }],
        at: Timestamp::UNIX_EPOCH,
    };
    assert_eq!(
        s.summary("apps", "chat"),
        Summary {
            read: 1,
            unread: 1,
            total: 3
        }
    );
    assert_eq!(
        s.total("apps", "chat"),
        None,
        "an unread pod makes the total unknown"
    );
    s.pods.pop();
    assert_eq!(s.total("apps", "chat"), Some(3));
    assert_eq!(s.total("apps", "nope"), None);
    let values = Values::new(Duration::ZERO);
    values.set(s.clone());
    std::thread::sleep(Duration::from_millis(5));
    assert!(values.current().pods.is_empty(), "older than max_age");
    let values = Values::new(Duration::from_secs(60));
    values.set(s.clone());
    assert_eq!(*values.current(), s);
}

/// A real gateway (the gateway crate, in this process) with real WebSocket clients is
/// read; a closed port is an error, not a zero.
#[tokio::test]
async fn reads_a_real_gateway_and_refuses_a_dead_port() {
    let gw = e2e::TestGateway::default().await;
    let addr = gw.gateway.addr;
    let read = || read_connections(addr, Duration::from_secs(5));
    assert_eq!(read().await.expect("read"), 0);
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    assert_eq!(read().await.expect("read"), 2);
    drop((alice, bob));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let err = read_connections(dead_addr, Duration::from_secs(5))
        .await
        .expect_err("dead port");
    assert!(matches!(err, ScrapeError::Connect(_)), "{err}");
    gw.stop().await;
}
