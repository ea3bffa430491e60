//! The Redis engine: any number of gateway processes sharing one Redis (one server, a
//! Redis Cluster, or a Sentinel-managed master: `redis.mode`) behave as one chat service.
//! Commands go through the mode's connection ([`conn`]: reconnects and re-routes by
//! itself); room traffic arrives on a dedicated pub/sub connection owned by the
//! [`subscriber`] task ([`sharded`] in a cluster).

mod channels;
mod conn;
mod delivery;
mod failure;
mod fast_path;
mod heads;
mod keys;
mod payload;
mod presence;
mod repair;
mod scripts;
mod sharded;
mod shared;
mod store;
mod sub_linger;
mod subscriber;
mod tls;

pub use payload::{parse_payload, parse_routed, Payload};

/// The hash tag of an inbox's keys and channel in a Redis Cluster (`#<bucket>`): which
/// slot, so which master, holds it (operations and tests).
pub fn inbox_tag(room: &str) -> String {
    format!("#{}", keys::bucket(room))
}

use super::{
    new_epoch, now_ms, Broker, Engine, EngineError, History, HistoryPage, HistoryQuery, Publish,
    Published,
};
use crate::config::{Config, Namespaces};
use crate::hub::Hub;
use crate::protocol::push::msg_frame_around_position;
use crate::protocol::StreamPosition;
use async_trait::async_trait;
use keys::Keys;
use redis::aio::ConnectionManagerConfig;
use shared::{Shared, SharedParts};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `pubsub_down_since` before the first connection: long ago, so not ready until connected.
pub(crate) const PUBSUB_DOWN_SINCE_START: u64 = 1;
/// How often Redis is pinged to notice outages and recoveries without traffic.
const HEALTH_PING: Duration = Duration::from_secs(1);
/// Node registry entries expire after this long without a report.
const NODE_TTL: Duration = Duration::from_secs(15);

/// Counters the engine reports to (registered in the node's metrics).
#[derive(Clone)]
pub struct RedisCounters {
    /// Failed or timed-out operations.
    pub errors: prometheus::IntCounter,
    /// Pub/sub reconnections.
    pub reconnects: prometheus::IntCounter,
}

impl Default for RedisCounters {
    /// Unregistered counters, for engines outside a node (tests).
    fn default() -> Self {
        let c = |n: &str| prometheus::IntCounter::new(n, n).expect("valid counter name");
        RedisCounters {
            errors: c("redis_errors"),
            reconnects: c("redis_reconnects"),
        }
    }
}

/// Engine backed by Redis (one server, a cluster, or Sentinel's master).
pub struct RedisEngine {
    shared: Arc<Shared>,
    subscriber: subscriber::Handle,
    stop: CancellationToken,
    /// Set while the pub/sub connection is up.
    pubsub_up: Arc<AtomicBool>,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RedisEngine {
    /// Connects lazily (the gateway starts even if Redis is down) and starts the
    /// subscriber and refresh tasks.
    pub fn new(
        hub: Arc<Hub>,
        config: &Config,
        counters: RedisCounters,
    ) -> Result<Self, EngineError> {
        let backend = conn::Backend::new(&config.redis, shared::OP_TIMEOUT)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(shared::OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let shared = Arc::new(Shared::new(SharedParts {
            keys: Keys::new(&config.redis.key_prefix, backend.db(), backend.is_cluster()),
            backend,
            manager_config,
            hub,
            history: config.history.clone(),
            inbox: config.inbox.clone(),
            namespaces: Namespaces::new(&config.namespaces),
            dedup_window: config.sessions.dedup_window,
            session_ttl: config.sessions.resume_ttl,
            readiness_grace: config.redis.readiness_grace,
            pubsub_down_since: PUBSUB_DOWN_SINCE_START,
            errors: counters.errors,
            reconnects: counters.reconnects,
        })?);
        let stop = CancellationToken::new();
        let pubsub_up = Arc::new(AtomicBool::new(false));
        let subscriber = subscriber::spawn(shared.clone(), pubsub_up.clone(), stop.clone());
        tokio::spawn(presence::refresh_presence(shared.clone(), stop.clone()));
        tokio::spawn(health(shared.clone(), stop.clone()));
        Ok(RedisEngine {
            shared,
            subscriber,
            stop,
            pubsub_up,
        })
    }
}

/// Pings Redis so outages and recoveries are noticed without traffic; in sentinel mode
/// also asks where the master is, and moves every connection to a new one.
async fn health(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEALTH_PING);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let conn::Backend::Sentinel(target) = &shared.backend {
            match target.refresh().await {
                Ok(true) => {
                    shared.reconnect();
                    shared.generation.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot ask the sentinels for the master"),
            }
        }
        let mut conn = shared.conn();
        if let Err(e) = shared
            .run(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
        {
            tracing::debug!(error = %e, "redis ping failed");
        }
    }
}

/// Publishes through the script (also used by the subscriber to move a message out of an
/// epoch the store fell behind in).
pub(crate) async fn publish(s: &Shared, msg: &Publish) -> Result<Published, EngineError> {
    let ns = s.namespaces.of(&msg.room);
    if !ns.keep_history || crate::protocol::is_internal(&msg.room) {
        return publish_ephemeral(s, msg).await;
    }
    let quota = if crate::protocol::is_inbox(&msg.room) {
        ns.dm_quota
    } else {
        0
    };
    // The script completes the frame with seq, epoch and ts: split it around them. (A
    // traceparent that is not one would break the pub/sub payload: `trace` drops it.)
    let traceparent = msg.trace();
    let (head, tail) = msg_frame_around_position(msg.content());
    let retention = s.retention(&msg.room);
    let seen = s.seen.get(&msg.room);
    let route = s.keys.route(&msg.room);
    let mut conn = s.conn();
    let (seq, epoch, code, ts): (u64, String, u8, u64) = s
        .run_write(
            scripts::PUBLISH
                .key(s.keys.meta(&msg.room))
                .key(s.keys.stream(&msg.room))
                .key(s.keys.dedup(&msg.room, &msg.from, &msg.msg_id))
                .key(s.keys.quota(&msg.room, &msg.from))
                .arg(&route.channel)
                .arg(new_epoch())
                .arg(head)
                .arg(tail)
                .arg(retention.max_messages)
                .arg(retention.max_age.as_millis() as u64)
                .arg(s.dedup_window.as_millis() as u64)
                .arg(traceparent.unwrap_or("-"))
                .arg(seen.as_ref().map_or("", |p| &*p.epoch))
                .arg(seen.as_ref().map_or(0, |p| p.seq))
                .arg(quota)
                .arg(&route.prefix)
                .arg(route.command)
                .invoke_async(&mut conn),
        )
        .await?;
    if code == 2 {
        return Err(EngineError::Quota(format!(
            "you have {quota} messages in this inbox already; wait until some expire"
        )));
    }
    s.seen.observe(&msg.room, &epoch, seq);
    Ok(Published {
        at: StreamPosition::new(epoch, seq),
        duplicate: code == 1,
        ephemeral: false,
        ts,
    })
}

/// A message of a namespace that keeps no history (or of an internal room): straight to
/// the room's channel, no seq.
async fn publish_ephemeral(s: &Shared, msg: &Publish) -> Result<Published, EngineError> {
    let traceparent = msg.trace();
    let env = super::Envelope::ephemeral(msg, now_ms());
    let route = s.keys.route(&msg.room);
    let payload = format!(
        "{}e {} {} {}",
        route.prefix,
        env.ts,
        traceparent.unwrap_or("-"),
        env.frame.as_str()
    );
    let mut conn = s.conn();
    let mut cmd = redis::cmd(route.command);
    cmd.arg(&route.channel).arg(payload);
    let _: i64 = s.run_write(cmd.query_async(&mut conn)).await?;
    Ok(Published::ephemeral())
}

#[async_trait]
impl Broker for RedisEngine {
    async fn publish(&self, msg: Publish) -> Result<Published, EngineError> {
        publish(&self.shared, &msg).await
    }
    async fn subscribe(&self, room: &str) -> Result<Option<HistoryPage>, EngineError> {
        if !self.pubsub_up.load(Ordering::Relaxed) {
            return Err(EngineError::Unavailable(
                "redis pub/sub connection is down".into(),
            ));
        }
        self.subscriber.subscribe(room).await
    }
    async fn unsubscribe(&self, room: &str) -> Result<(), EngineError> {
        self.subscriber.unsubscribe(room).await
    }
}

#[async_trait]
impl History for RedisEngine {
    async fn history(&self, room: &str, q: HistoryQuery) -> Result<HistoryPage, EngineError> {
        self.shared.history(room, q).await
    }
}

#[async_trait]
impl Engine for RedisEngine {
    async fn enter(
        &self,
        room: &str,
        user: &str,
        conn: &str,
    ) -> Result<Option<HistoryPage>, EngineError> {
        presence::enter(&self.shared, room, user, conn).await
    }

    fn healthy(&self) -> bool {
        let grace = self.shared.readiness_grace.as_millis() as u64;
        let now = now_ms();
        let within = |since: u64| since == 0 || now.saturating_sub(since) < grace;
        within(self.shared.down_since.load(Ordering::Relaxed))
            && within(self.shared.pubsub_down_since.load(Ordering::Relaxed))
    }

    #[cfg(any(test, feature = "testing"))]
    async fn rewind_for_test(&self, room: &str, keep: Option<u64>) {
        // What a restore from an older snapshot leaves: the meta at `keep` and a stream
        // whose entries (and last id) end there.
        const REWIND: &str = r"
            if ARGV[1] == '' then return redis.call('DEL', KEYS[1], KEYS[2]) end
            local kept = redis.call('XRANGE', KEYS[2], '-', ARGV[1] .. '-1')
            redis.call('DEL', KEYS[2])
            for _, e in ipairs(kept) do redis.call('XADD', KEYS[2], e[1], unpack(e[2])) end
            redis.call('HSET', KEYS[1], 'seq', ARGV[1])
            return 1";
        let s = &self.shared;
        let mut c = s.conn();
        let keep = keep.map_or(String::new(), |k| k.to_string());
        let done: redis::RedisResult<i64> = redis::Script::new(REWIND)
            .key(s.keys.meta(room))
            .key(s.keys.stream(room))
            .arg(keep)
            .invoke_async(&mut c)
            .await;
        done.expect("rewind a room in redis");
    }
}
