//! What a message and a connection cost a Redis Cluster, counted by Redis itself.
//!
//! Starts a local 3+3 Redis Cluster and two gateway processes on it (from the same target
//! directory as this binary; build with `--release`). Step 1: `connections` idle users
//! connect to gateway B (each with its inbox delivered there); the cluster's
//! `INFO commandstats` before and after give the Redis calls per connection. Step 2: a
//! sender on gateway A publishes `messages` messages round-robin over `rooms` rooms (spread
//! over the masters by slot) and the inboxes of those users, with a bounded number in
//! flight, while a receiver on B is in every room; the calls per message follow the same
//! way. Redis counts the commands a script runs too: a message is one `evalsha` from the
//! gateway, the rest of its line ran inside that script. Prints one JSON line:
//! `{"mode":"cluster","connections":N,"calls_per_connection":{..},"messages":M,
//! "publish_per_s":..,"calls_per_message":{..},"delivered":..}`.
//!
//! Usage: `redis-cluster-bench [messages] [rooms] [connections] [in-flight]`

use e2e::process::GatewayProcess;
use e2e::redis_cluster::RedisCluster;
use e2e::Client;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Calls per unit of each command whose count changed, rounded to 3 decimals.
fn per(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, units: u64) -> Value {
    let mut out = Map::new();
    for (cmd, calls) in after {
        let delta = calls.saturating_sub(before.get(cmd).copied().unwrap_or(0));
        // The statistics' own reads and replication are not the gateways' cost.
        if delta == 0 || matches!(cmd.as_str(), "info" | "config|resetstat" | "replconf") {
            continue;
        }
        let v = (delta as f64 / units.max(1) as f64 * 1000.0).round() / 1000.0;
        out.insert(cmd.clone(), json!(v));
    }
    Value::Object(out)
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(20_000).clamp(1, 1_000_000);
    let rooms = args.get(1).copied().unwrap_or(12).clamp(1, 1000);
    let conns = args.get(2).copied().unwrap_or(200).clamp(1, 10_000);
    let window = args.get(3).copied().unwrap_or(64).max(1);

    let cluster = RedisCluster::start();
    let mut env: Vec<(String, String)> = cluster.env();
    for (k, v) in [
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_ENGINE", "redis"),
        ("CHATGW_LIMITS__MESSAGE_RATE", "1000000"),
        ("CHATGW_LIMITS__USER_MESSAGE_RATE", "0"),
        ("CHATGW_LIMITS__MESSAGE_BURST", "1000000"),
        ("CHATGW_LIMITS__CONNECTIONS_PER_IP", "0"),
        ("CHATGW_LIMITS__HANDSHAKES_PER_IP", "0"),
        ("CHATGW_ADMISSION__PER_IP_RATE", "0"),
        ("CHATGW_HISTORY__MAX_MESSAGES", "1000"),
        ("CHATGW_NAMESPACES", "[{prefix: 'user:', dmQuota: 0}]"),
    ] {
        env.push((k.into(), v.into()));
    }
    let start_gw = |id: &str| {
        let mut e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        e.push(("CHATGW_NODE__ID", id));
        GatewayProcess::start(&e)
    };
    let a = start_gw("bench-a");
    let b = start_gw("bench-b");
    a.wait_ready(200, Duration::from_secs(30));
    b.wait_ready(200, Duration::from_secs(30));
    // Let the start-up subscriptions and first reports settle before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. Connections.
    let before = cluster.command_calls();
    let mut idle = Vec::new();
    for i in 0..conns {
        let c = Client::connect(&b.ws_url(&format!("user=u{i}")))
            .await
            .expect("connect an idle user");
        idle.push(c);
    }
    let after = cluster.command_calls();
    let per_connection = per(&before, &after, conns);

    // 2. Messages: rooms and DMs to the idle users, received on B.
    let room_names: Vec<String> = (0..rooms).map(|r| format!("bench{r}")).collect();
    let mut rx = Client::connect(&b.ws_url("user=rx"))
        .await
        .expect("receiver");
    for r in &room_names {
        rx.join(r).await;
    }
    let mut tx = Client::connect(&a.ws_url("user=tx")).await.expect("sender");
    for r in &room_names {
        tx.join(r).await;
    }
    let targets: Vec<String> = room_names
        .iter()
        .cloned()
        .chain((0..conns).map(|i| format!("user:u{i}")))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cluster.command_calls();
    let t0 = Instant::now();
    let mut in_flight = 0u64;
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut failed = 0u64;
    let mut ids = std::collections::HashSet::new();
    while acked + failed < total {
        while sent < total && in_flight < window {
            let room = &targets[(sent as usize) % targets.len()];
            let id = tx
                .send_cmd(json!({"type": "send", "room": room, "body": {"n": sent}}))
                .await;
            ids.insert(id);
            sent += 1;
            in_flight += 1;
        }
        let Some(f) = tx.next_frame().await else {
            break;
        };
        let is_reply = f["ref"].as_u64().is_some_and(|r| ids.remove(&r));
        if is_reply {
            in_flight -= 1;
            if f["type"] == "ok" {
                acked += 1;
            } else {
                failed += 1;
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // The receiver's share: every room message reaches it once.
    let room_msgs = acked * rooms / targets.len() as u64;
    let got = rx.drain_msgs(Duration::from_secs(2)).await.len() as u64;
    let after = cluster.command_calls();
    let line = json!({
        "mode": "cluster",
        "masters": cluster.masters().len(),
        "connections": conns,
        "calls_per_connection": per_connection,
        "messages": acked,
        "failed": failed,
        "rooms": rooms,
        "dm_share": format!("{}/{}", conns, targets.len()),
        "publish_per_s": (acked as f64 / elapsed).round(),
        "calls_per_message": per(&before, &after, acked),
        "room_messages_received": got,
        "room_messages_expected_about": room_msgs,
    });
    println!("{line}");
    drop(idle);
}
