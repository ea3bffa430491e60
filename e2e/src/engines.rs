//! Redis engines outside any gateway for the engine tests, on whichever Redis deployment
//! a config names (one server, a cluster, Sentinel).

use chat_gateway::config::Config;
use chat_gateway::engine::redis::RedisEngine;
use chat_gateway::engine::{Engine, Publish};
use chat_gateway::hub::Hub;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A Redis engine on `base`'s Redis (with `config`'s other sections), under a fresh key
/// prefix so no state leaks between checks; returns once it is healthy.
pub async fn fresh(base: &Config, hub: Arc<Hub>, config: &Config) -> Arc<RedisEngine> {
    let mut config = config.clone();
    config.redis = base.redis.clone();
    config.redis.key_prefix = format!("t{:08x}", rand::random::<u32>());
    start(&config, hub).await
}

/// A Redis engine of exactly `config`, delivering into `hub`; returns once it is healthy.
pub async fn start(config: &Config, hub: Arc<Hub>) -> Arc<RedisEngine> {
    let engine = Arc::new(RedisEngine::new(hub, config, Default::default()).expect("redis engine"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine.healthy() {
        assert!(
            Instant::now() < deadline,
            "redis engine never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine
}

/// Message `n` of `room`: from `p`, its msg id `<room>-<n>`, its body `n`.
pub fn message(room: &str, n: u64) -> Publish {
    Publish {
        room: room.into(),
        from: "p".into(),
        msg_id: format!("{room}-{n}"),
        body: serde_json::value::RawValue::from_string(n.to_string()).expect("body"),
        traceparent: None,
    }
}

/// The conformance factory of a Redis deployment.
pub struct Fresh(pub Config);

impl chat_gateway::engine::conformance::Factory for Fresh {
    async fn make(&self, hub: Arc<Hub>, config: &Config) -> Arc<dyn Engine> {
        fresh(&self.0, hub, config).await
    }
}
