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
