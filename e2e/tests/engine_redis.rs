//! The engine conformance suite, unchanged, against a real redis-server.

use chat_gateway::config::Config;
use chat_gateway::engine::conformance::{run_all, Factory};
use chat_gateway::engine::redis::RedisEngine;
use chat_gateway::engine::Engine;
use chat_gateway::hub::Hub;
use e2e::redis::RedisServer;
use std::sync::Arc;
use std::time::Duration;

struct Fresh {
    url: String,
}

impl Factory for Fresh {
    async fn make(&self, hub: Arc<Hub>, config: &Config) -> Arc<dyn Engine> {
        let mut config = config.clone();
        config.redis.url = self.url.clone();
        // A new key prefix per engine: no state leaks between checks.
        config.redis.key_prefix = format!("t{:08x}", rand::random::<u32>());
        let engine =
            Arc::new(RedisEngine::new(hub, &config, Default::default()).expect("redis engine"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !engine.healthy() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis engine never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        engine
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_engine_passes_the_conformance_suite() {
    let redis = RedisServer::start();
    run_all(&Fresh { url: redis.url() }).await;
}

async fn engine_with_prefix(url: &str, prefix: &str) -> Arc<dyn Engine> {
    let mut config = Config::default();
    config.redis.url = url.to_string();
    config.redis.key_prefix = prefix.to_string();
    let hub = Arc::new(Hub::default());
    let engine =
        Arc::new(RedisEngine::new(hub, &config, Default::default()).expect("redis engine"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !engine.healthy() {
        assert!(tokio::time::Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine
}

/// The node registry lists every node of a cluster (rebalancing compares against all of
/// them), and only that cluster's: two key prefixes on one Redis are two clusters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registry_lists_every_node_of_its_prefix_only() {
    use chat_gateway::engine::NodeReport;
    let redis = RedisServer::start();
    let ours = format!("t{:08x}", rand::random::<u32>());
    let theirs = format!("t{:08x}", rand::random::<u32>());
    let engine = engine_with_prefix(&redis.url(), &ours).await;
    let other = engine_with_prefix(&redis.url(), &theirs).await;
    let report = |id: &str, connections: u64| NodeReport {
        id: id.into(),
        connections,
        draining: false,
        heartbeat: chat_gateway::engine::now_ms(),
    };
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        engine
            .report_node(&report(id, i as u64))
            .await
            .expect("report");
    }
    other
        .report_node(&report("stranger", 9))
        .await
        .expect("report");
    let nodes = engine.nodes().await.expect("nodes");
    let seen: Vec<(String, u64)> = nodes
        .iter()
        .map(|n| (n.id.clone(), n.connections))
        .collect();
    assert_eq!(
        seen,
        [
            ("a".into(), 0),
            ("b".into(), 1),
            ("c".into(), 2),
            ("d".into(), 3)
        ]
    );
    let theirs: Vec<String> = other
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(theirs, ["stranger"]);
}
