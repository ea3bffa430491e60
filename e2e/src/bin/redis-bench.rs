//! Cross-process delivery latency and publish throughput through Redis.
//!
//! Starts a redis-server and two gateway processes (from the same target directory as this
//! binary; build with `--release`), publishes on process A with a bounded number of sends
//! in flight, receives on process B, and prints one JSON line:
//! `{"published":N,"publish_per_s":..,"latency_ms":{"p50":..,"p90":..,"p99":..,"max":..}}`.
//! Latency is measured in this one process with one monotonic clock.
//!
//! Usage: `redis-bench [messages] [in-flight] [receivers]`

use e2e::process::GatewayProcess;
use e2e::redis::RedisServer;
use e2e::Client;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(20_000).min(1_000_000);
    let window = args.get(1).copied().unwrap_or(64).max(1);
    let receivers = args.get(2).copied().unwrap_or(1).clamp(1, 100);
    let redis = RedisServer::start();
    let url = redis.url();
    let env = |id: &'static str| {
        vec![
            ("CHATGW_AUTH__MODE", "insecure"),
            ("CHATGW_ENGINE", "redis"),
            ("CHATGW_REDIS__URL", url.as_str()),
            ("CHATGW_NODE__ID", id),
            ("CHATGW_LIMITS__MESSAGE_RATE", "1000000"),
            ("CHATGW_LIMITS__USER_MESSAGE_RATE", "0"),
            ("CHATGW_LIMITS__MESSAGE_BURST", "1000000"),
            ("CHATGW_HISTORY__MAX_MESSAGES", "1000"),
        ]
    };
    let a = GatewayProcess::start(&env("bench-a"));
    let b = GatewayProcess::start(&env("bench-b"));
    a.wait_ready(200, Duration::from_secs(20));
    b.wait_ready(200, Duration::from_secs(20));

    let mut rx_clients = Vec::new();
    for i in 0..receivers {
        let mut c = Client::connect(&b.ws_url(&format!("user=rx{i}")))
            .await
            .expect("receiver");
        c.join("bench").await;
        rx_clients.push(c);
    }
    let mut tx = Client::connect(&a.ws_url("user=tx")).await.expect("sender");
    tx.join("bench").await;

    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::with_capacity((total * receivers) as usize);
        for mut c in rx_clients {
            let mut got = 0;
            while got < total {
                let Some(m) = c.next_frame().await else { break };
                if m["type"] != "msg" {
                    continue;
                }
                if let Some(sent_ns) = m["body"]["t"].as_u64() {
                    lat.push(start.elapsed().as_nanos() as u64 - sent_ns);
                }
                got += 1;
            }
        }
        lat
    });
    let mut in_flight: HashMap<u64, ()> = HashMap::new();
    let mut sent = 0;
    let mut acked = 0;
    let t0 = Instant::now();
    while acked < total {
        while sent < total && (in_flight.len() as u64) < window {
            let t = start.elapsed().as_nanos() as u64;
            let id = tx.send_cmd(json!({"type": "send", "room": "bench", "body": {"t": t, "pad": "x".repeat(60)}})).await;
            in_flight.insert(id, ());
            sent += 1;
        }
        let f = tx.next_frame().await.expect("sender frame");
        if f["type"] == "ok" {
            if let Some(r) = f["ref"].as_u64() {
                in_flight.remove(&r);
                acked += 1;
            }
        } else if f["type"] == "error" {
            panic!("send failed: {f}");
        }
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    let mut lat = receiver.await.expect("receiver");
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i] as f64 / 1e6
    };
    println!(
        "{}",
        json!({
            "published": total,
            "in_flight": window,
            "receivers": receivers,
            "delivered": lat.len(),
            "publish_per_s": (total as f64 / publish_secs).round(),
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        })
    );
    drop((a, b, redis));
}
