//! Redis engines outside any gateway for the engine tests, on whichever Redis deployment
//! a config names (one server, a cluster, Sentinel).

use chat_gateway::config::Config;
use chat_gateway::engine::redis::RedisEngine;
use chat_gateway::engine::{Engine, HistoryPage, Publish};
use chat_gateway::hub::Hub;
use chat_gateway::outbound::{Outbound, OutboundQueue, OutboundReceiver};
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

/// A Redis engine at `url` under key `prefix` (nodes of one deployment share it),
/// delivering to a hub of its own; once healthy.
pub async fn engine_with_prefix(url: &str, prefix: &str) -> Arc<dyn Engine> {
    engine_on_hub(Arc::new(Hub::default()), url, prefix).await
}

/// A Redis engine at `url` under key `prefix` delivering to `hub`, once healthy.
pub async fn engine_on_hub(hub: Arc<Hub>, url: &str, prefix: &str) -> Arc<dyn Engine> {
    let mut config = Config::default();
    config.redis.url = url.to_string();
    config.redis.key_prefix = prefix.to_string();
    start(&config, hub).await
}

/// A subscribing engine on a hub (at `sub_url`) and a publishing one (at `pub_url`)
/// sharing a fresh key prefix: two nodes of one deployment.
pub async fn two_nodes(
    sub_url: &str,
    pub_url: &str,
) -> (Arc<Hub>, Arc<dyn Engine>, Arc<dyn Engine>) {
    let prefix = format!("t{:08x}", rand::random::<u32>());
    let hub = Arc::new(Hub::default());
    let subscriber = engine_on_hub(hub.clone(), sub_url, &prefix).await;
    let publisher = engine_with_prefix(pub_url, &prefix).await;
    (hub, subscriber, publisher)
}

/// A connection `conn` in `room` on `hub` and its node's subscription, which may hand back
/// the room's head (see `Broker::subscribe`).
pub async fn listen(
    hub: &Hub,
    engine: &dyn Engine,
    room: &str,
    conn: u64,
) -> (OutboundReceiver, Option<HistoryPage>) {
    let (rx, _, head) = listen_queue(hub, engine, room, conn).await;
    (rx, head)
}

/// [`listen`], also handing back the connection's queue (to see how it was closed).
pub async fn listen_queue(
    hub: &Hub,
    engine: &dyn Engine,
    room: &str,
    conn: u64,
) -> (OutboundReceiver, OutboundQueue, Option<HistoryPage>) {
    let (q, rx) = chat_gateway::outbound::queue(100, 1 << 20);
    hub.subscribe(&Arc::from(room), conn, q.clone());
    let head = engine.subscribe(room).await.expect("subscribe");
    (rx, q, head)
}

/// The next message a connection's queue holds as (room, seq), waiting up to 10 s;
/// other items are skipped.
pub async fn next_msg(rx: &mut OutboundReceiver) -> Option<(String, u64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match rx.try_recv_for_test() {
            Some(Outbound::Msg(env)) => return Some((env.room.to_string(), env.seq)),
            Some(_) => {}
            None if tokio::time::Instant::now() > deadline => return None,
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
