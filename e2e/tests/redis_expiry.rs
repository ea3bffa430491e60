//! A room's keys in a real redis-server expire (its stream two max ages after the last
//! refresh, its meta a week later), and a publish refreshes them only when less than one
//! and a half max ages are left or the stream has none yet, not on every message.

use chat_gateway::config::Config;
use chat_gateway::engine::Engine;
use chat_gateway::hub::Hub;
use e2e::engines::message;
use e2e::redis::RedisServer;
use std::sync::Arc;
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;
const WEEK_MS: i64 = 7 * 24 * HOUR_MS;

/// A Redis engine on `redis` under `prefix`, keeping room history for `max_age`.
async fn engine(redis: &RedisServer, prefix: &str, max_age: Duration) -> Arc<dyn Engine> {
    let mut config = Config::default();
    config.redis.url = redis.url();
    config.redis.key_prefix = prefix.into();
    config.history.max_age = max_age;
    e2e::engines::start(&config, Arc::new(Hub::default())).await
}

async fn publish(engine: &dyn Engine, room: &str, n: u64) {
    let published = engine.publish(message(room, n)).await.expect("publish");
    assert!(!published.duplicate, "message {n} is new");
}

/// The key's time to live in ms (-1: none, -2: no key).
fn pttl(redis: &RedisServer, key: &str) -> i64 {
    match redis.command(&["PTTL", key]) {
        Ok(redis::Value::Int(ms)) => ms,
        other => panic!("PTTL {key}: {other:?}"),
    }
}

fn fresh_prefix() -> String {
    format!("x{:08x}", rand::random::<u32>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_s_keys_expire_and_messages_do_not_refresh_them_each_time() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let engine = engine(&redis, &prefix, Duration::from_secs(3600)).await;
    let (meta, stream) = (format!("{prefix}:{{r}}:m"), format!("{prefix}:{{r}}:s"));
    let before = redis.calls("pexpire");
    for n in 1..=20 {
        publish(&*engine, "r", n).await;
    }
    // The first message gave both keys their expiry; the other 19 left it.
    assert_eq!(
        redis.calls("pexpire") - before,
        2,
        "one refresh of meta and stream"
    );
    let (m, s) = (pttl(&redis, &meta), pttl(&redis, &stream));
    assert!(
        s > HOUR_MS && s <= 2 * HOUR_MS,
        "stream lives two max ages: {s} ms"
    );
    assert!(
        m > WEEK_MS + HOUR_MS && m <= WEEK_MS + 2 * HOUR_MS,
        "meta a week longer: {m} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gone_under_its_meta_gets_an_expiry_again() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let engine = engine(&redis, &prefix, Duration::from_secs(3600)).await;
    let stream = format!("{prefix}:{{r}}:s");
    publish(&*engine, "r", 1).await;
    // As an eviction would: the stream goes, the meta (and its record of the expiry) stays.
    redis.command(&["DEL", &stream]).expect("DEL");
    publish(&*engine, "r", 2).await;
    let s = pttl(&redis, &stream);
    assert!(
        s > HOUR_MS && s <= 2 * HOUR_MS,
        "the new stream expires: {s} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_max_age_refreshes_the_expiry_at_once() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let short = engine(&redis, &prefix, Duration::from_secs(3600)).await;
    publish(&*short, "r", 1).await;
    // Another node (or a new config) keeps the room's messages a day.
    let long = engine(&redis, &prefix, Duration::from_secs(24 * 3600)).await;
    publish(&*long, "r", 2).await;
    let s = pttl(&redis, &format!("{prefix}:{{r}}:s"));
    assert!(
        s > 24 * HOUR_MS && s <= 48 * HOUR_MS,
        "message 2 outlives its day: {s} ms"
    );
}
