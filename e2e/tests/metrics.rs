//! `/metrics` after a scripted session: valid Prometheus text with exactly the expected
//! counter and gauge values.

use e2e::{http_get, test_config, TestGateway};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Parses Prometheus text exposition strictly: every line is a HELP/TYPE comment or a
/// `name{labels} value` sample whose metric was declared with TYPE.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().expect("type name");
            let kind = parts.next().expect("type kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (sample, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = sample.split('{').next().unwrap_or_default();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| typed.contains(*b))
            .unwrap_or(name);
        assert!(typed.contains(base), "sample without TYPE: {line}");
        assert!(
            !sample.contains("user=") && !sample.contains("room="),
            "unbounded label: {line}"
        );
        samples.insert(sample.to_string(), value);
    }
    samples
}

async fn scrape(gw: &TestGateway) -> BTreeMap<String, f64> {
    let (status, body) = http_get(gw.gateway.addr, "/metrics").await;
    assert_eq!(status, 200);
    parse(&body)
}

/// A sample that must be there: a renamed metric or label fails instead of reading 0.
fn get(m: &BTreeMap<String, f64>, k: &str) -> f64 {
    m.get(k)
        .copied()
        .unwrap_or_else(|| panic!("no sample {k} in /metrics: {:?}", m.keys()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_session_gives_exact_metrics() {
    let mut cfg = test_config();
    cfg.limits.max_frame_bytes = 8192;
    cfg.limits.outbound_queue_frames = 16;
    cfg.limits.outbound_queue_bytes = 64 * 1024;
    cfg.limits.message_rate = 100_000.0;
    cfg.limits.user_message_rate = 0.0;
    cfg.limits.message_burst = 100_000;
    let gw = TestGateway::start(cfg).await;

    let mut alice = gw.connect("alice").await;
    let mut bob = gw.connect("bob").await;
    alice.join("m").await;
    bob.join("m").await;
    for i in 0..3 {
        assert_eq!(alice.send("m", json!(i)).await["type"], "ok");
    }
    assert_eq!(alice.drain_msgs(Duration::from_millis(200)).await.len(), 3);
    assert_eq!(bob.drain_msgs(Duration::from_millis(200)).await.len(), 3);
    let m = scrape(&gw).await;
    assert_eq!(get(&m, "chatgateway_connections"), 2.0);
    assert_eq!(get(&m, "chatgateway_connections_accepted_total"), 2.0);
    assert_eq!(get(&m, "chatgateway_messages_received_total"), 3.0);
    assert_eq!(get(&m, "chatgateway_messages_delivered_total"), 6.0);
    assert_eq!(get(&m, "chatgateway_publish_duration_seconds_count"), 3.0);
    assert_eq!(get(&m, "chatgateway_delivery_latency_seconds_count"), 6.0);
    assert_eq!(get(&m, "chatgateway_rooms"), 3.0, "m and two inboxes");

    // Oversize frame.
    let mut carol = gw.connect("carol").await;
    let _ = carol.send_raw(Message::text("x".repeat(10_000))).await;
    assert_eq!(carol.expect_close().await.map(|c| c.0), Some(1009));

    // Slow consumer in its own room.
    let mut dave = gw.connect("dave").await;
    dave.join("flood").await;
    let mut eve = gw.connect("eve").await;
    eve.join("flood").await;
    let big = "z".repeat(7000);
    for _ in 0..2000 {
        // The labelled series appears with its first increment.
        if scrape(&gw)
            .await
            .contains_key("chatgateway_drops_total{reason=\"slow_consumer\"}")
        {
            break;
        }
        for _ in 0..20 {
            assert_eq!(eve.send("flood", json!(big)).await["type"], "ok");
        }
        eve.drain_msgs(Duration::from_millis(1)).await;
    }
    drop(dave);

    // Everybody leaves.
    drop((alice, bob, carol, eve));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gw.gateway.node.connection_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections did not close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = scrape(&gw).await;
    assert_eq!(get(&m, "chatgateway_connections"), 0.0);
    assert_eq!(get(&m, "chatgateway_connections_accepted_total"), 5.0);
    assert_eq!(get(&m, "chatgateway_drops_total{reason=\"oversize\"}"), 1.0);
    assert_eq!(
        get(&m, "chatgateway_drops_total{reason=\"slow_consumer\"}"),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "chatgateway_connections_closed_total{reason=\"message too big\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "chatgateway_connections_closed_total{reason=\"slow consumer\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "chatgateway_connections_closed_total{reason=\"client closed\"}"
        ),
        3.0
    );
    assert_eq!(get(&m, "chatgateway_rooms"), 0.0);
    assert!(get(&m, "chatgateway_outbound_queue_high_water_bytes") <= 64.0 * 1024.0);
    assert_eq!(get(&m, "chatgateway_redis_errors_total"), 0.0);
    gw.stop().await;
}

/// `memory.maxBytes` through a whole node: the memory engine's gauge and eviction counter
/// are the node's (`/metrics`), and a room past the budget starts later in `history`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_engines_budget_is_metered_and_evicts_the_oldest() {
    const MAX: u64 = 1 << 20;
    let mut cfg = test_config();
    cfg.memory.max_bytes = Some(MAX);
    cfg.limits.max_frame_bytes = 8192;
    cfg.limits.message_rate = 100_000.0;
    cfg.limits.user_message_rate = 0.0;
    cfg.limits.message_burst = 100_000;
    let gw = TestGateway::start(cfg).await;
    let mut alice = gw.connect("alice").await;
    alice.join("a").await;
    let big = "z".repeat(7000);
    // 200 messages of about 7.3 KB each: 1.4 MiB sent into a budget of 1.
    for _ in 0..10 {
        for _ in 0..20 {
            assert_eq!(alice.send("a", json!(big)).await["type"], "ok");
        }
        alice.drain_msgs(Duration::from_millis(1)).await;
    }
    let m = scrape(&gw).await;
    assert_eq!(get(&m, "chatgateway_memory_engine_max_bytes"), MAX as f64);
    let held = get(&m, "chatgateway_memory_engine_bytes");
    assert!(held > 0.0 && held <= MAX as f64, "held {held}");
    let evicted = get(&m, "chatgateway_memory_engine_evicted_total{kind=\"room\"}");
    assert!(evicted > 0.0, "evicted {evicted}");
    let page = alice
        .request(json!({"type": "history", "room": "a", "limit": 1}))
        .await;
    assert_eq!(page["top"], 200);
    assert_eq!(
        page["first"].as_f64(),
        Some(evicted + 1.0),
        "the oldest went: {page}"
    );
    gw.stop().await;
}
