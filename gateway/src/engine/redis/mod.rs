//! The Redis engine: any number of gateway processes sharing one Redis behave as one chat
//! service. Commands go through a [`ConnectionManager`] (reconnects by itself); room
//! traffic arrives on a dedicated pub/sub connection owned by the [`subscriber`] task.

mod scripts;
mod subscriber;

use super::{
    new_epoch, now_ms, Broker, Engine, EngineError, Envelope, History, HistoryPage, HistoryQuery,
    NodeReport, Nodes, PresenceManager, Publish, Published, SessionRecord, Sessions,
};
use crate::config::{Config, RetentionConfig};
use crate::hub::Hub;
use crate::protocol::push::{msg_frame_around_position, presence_frame};
use crate::protocol::StreamPosition;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest wait for one Redis operation before answering `unavailable`.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often presence entries of local connections are refreshed.
const PRESENCE_REFRESH: Duration = Duration::from_secs(10);
/// Presence entries not refreshed for this long are expired (a node died).
const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// `pubsub_down_since` before the first connection: long ago, so not ready until connected.
pub(crate) const PUBSUB_DOWN_SINCE_START: u64 = 1;
/// How often Redis is pinged to notice outages and recoveries without traffic.
const HEALTH_PING: Duration = Duration::from_secs(1);
/// Node registry entries expire after this long without a report.
const NODE_TTL: Duration = Duration::from_secs(15);

/// Key names of the engine.
#[derive(Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn room(&self, room: &str, suffix: &str) -> String {
        format!("{}:{{{room}}}:{suffix}", self.prefix)
    }
    pub(crate) fn meta(&self, room: &str) -> String {
        self.room(room, "m")
    }
    pub(crate) fn stream(&self, room: &str) -> String {
        self.room(room, "s")
    }
    fn dedup(&self, room: &str, from: &str, msg_id: &str) -> String {
        format!("{}:{{{room}}}:d:{from}\0{msg_id}", self.prefix)
    }
    fn presence_conns(&self, room: &str) -> String {
        self.room(room, "pc")
    }
    fn presence_users(&self, room: &str) -> String {
        self.room(room, "pu")
    }
    pub(crate) fn channel(&self, room: &str) -> String {
        format!("{}:c:{room}", self.prefix)
    }
    pub(crate) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix(":c:")
    }
    fn session(&self, token: &str) -> String {
        format!("{}:sess:{token}", self.prefix)
    }
    fn inbox_cursor(&self, user: &str) -> String {
        format!("{}:ic:{user}", self.prefix)
    }
    fn node(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }
    fn admission(&self, second: u64) -> String {
        format!("{}:adm:{second}", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

/// Shared by the engine and its background tasks.
pub(crate) struct Shared {
    pub(crate) keys: Keys,
    pub(crate) conn: ConnectionManager,
    pub(crate) hub: Arc<Hub>,
    history: RetentionConfig,
    inbox: RetentionConfig,
    dedup_window: Duration,
    session_ttl: Duration,
    /// Unix ms since when Redis has been failing (0 = healthy).
    down_since: AtomicU64,
    readiness_grace: Duration,
    /// (room, user, conn) present through this node, refreshed periodically.
    local_presence: Mutex<HashSet<(String, String, String)>>,
    /// Unix ms since when the pub/sub connection has been down (0 = up).
    pub(crate) pubsub_down_since: AtomicU64,
    /// Counts of Redis errors and reconnects (metrics).
    pub(crate) errors: prometheus::IntCounter,
    pub(crate) reconnects: prometheus::IntCounter,
}

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

impl Shared {
    fn retention(&self, room: &str) -> &RetentionConfig {
        if crate::protocol::is_inbox(room) {
            &self.inbox
        } else {
            &self.history
        }
    }

    /// Maps a Redis error to an engine error and records the outage.
    pub(crate) fn fail(&self, e: redis::RedisError) -> EngineError {
        self.errors.inc();
        let _ = self.down_since.compare_exchange(
            0,
            now_ms().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_connection_refusal()
        {
            EngineError::Unavailable(format!("redis: {e}"))
        } else {
            EngineError::Internal(format!("redis: {e}"))
        }
    }

    pub(crate) fn ok(&self) {
        self.down_since.store(0, Ordering::Relaxed);
    }

    /// Runs one Redis operation with a deadline: a stalled or unreachable Redis turns into
    /// `unavailable` within [`OP_TIMEOUT`] instead of a hanging command.
    pub(crate) async fn run<T>(
        &self,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => {
                self.ok();
                Ok(v)
            }
            Ok(Err(e)) => Err(self.fail(e)),
            Err(_) => {
                self.errors.inc();
                let _ = self.down_since.compare_exchange(
                    0,
                    now_ms().max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                Err(EngineError::Unavailable(
                    "redis did not answer in time".into(),
                ))
            }
        }
    }

    /// Reads history (also used by the subscriber to fill gaps after a reconnect).
    pub(crate) async fn history(
        &self,
        room: &str,
        q: HistoryQuery,
    ) -> Result<HistoryPage, EngineError> {
        let (start, end, reverse) = match (q.since, q.before) {
            (_, Some(b)) if b <= 1 => ("-".to_string(), "-".to_string(), false),
            (Some(s), Some(b)) => (format!("{}-0", s + 1), format!("{}-1", b - 1), false),
            (Some(s), None) => (format!("{}-0", s + 1), "+".to_string(), false),
            (None, Some(b)) => ("-".to_string(), format!("{}-1", b - 1), true),
            (None, None) => ("-".to_string(), "+".to_string(), true),
        };
        let empty = matches!(q.before, Some(b) if b <= 1);
        let limit = if empty { 0 } else { q.limit.min(1_000_000) };
        let max_age = self.retention(room).max_age.as_millis() as u64;
        let mut conn = self.conn.clone();
        let raw: Vec<redis::Value> = self
            .run(
                scripts::HISTORY
                    .key(self.keys.meta(room))
                    .key(self.keys.stream(room))
                    .arg(start)
                    .arg(end)
                    .arg(if reverse { "1" } else { "0" })
                    .arg(limit)
                    .arg(max_age)
                    .arg(new_epoch())
                    .invoke_async(&mut conn),
            )
            .await?;
        parse_history(room, raw)
    }
}

fn parse_history(room: &str, raw: Vec<redis::Value>) -> Result<HistoryPage, EngineError> {
    let bad = || EngineError::Internal("unexpected history reply from redis".into());
    let mut it = raw.into_iter();
    let epoch: String = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let top: u64 = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let first: u64 = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let epoch: Arc<str> = epoch.into();
    let room: Arc<str> = room.into();
    let mut messages = Vec::new();
    while let (Some(seq), Some(frame)) = (it.next(), it.next()) {
        let seq: u64 = redis::from_redis_value(seq).map_err(|_| bad())?;
        let frame: String = redis::from_redis_value(frame).map_err(|_| bad())?;
        messages.push(Arc::new(Envelope {
            room: room.clone(),
            seq,
            epoch: epoch.clone(),
            ts: 0,
            traceparent: None,
            frame: frame.into(),
        }));
    }
    Ok(HistoryPage {
        epoch,
        top,
        first,
        messages,
    })
}

/// Engine backed by one Redis server.
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
        let client = redis::Client::open(config.redis.url.as_str())
            .map_err(|e| EngineError::Internal(format!("redis.url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| EngineError::Internal(format!("redis: {e}")))?;
        let shared = Arc::new(Shared {
            keys: Keys {
                prefix: config.redis.key_prefix.clone(),
            },
            conn,
            hub,
            history: config.history.clone(),
            inbox: config.inbox.clone(),
            dedup_window: config.sessions.dedup_window,
            session_ttl: config.sessions.resume_ttl,
            down_since: AtomicU64::new(0),
            readiness_grace: config.redis.readiness_grace,
            local_presence: Mutex::new(HashSet::new()),
            pubsub_down_since: AtomicU64::new(PUBSUB_DOWN_SINCE_START),
            errors: counters.errors,
            reconnects: counters.reconnects,
        });
        let stop = CancellationToken::new();
        let pubsub_up = Arc::new(AtomicBool::new(false));
        let subscriber = subscriber::spawn(client, shared.clone(), pubsub_up.clone(), stop.clone());
        tokio::spawn(refresh_presence(shared.clone(), stop.clone()));
        tokio::spawn(health(shared.clone(), stop.clone()));
        Ok(RedisEngine {
            shared,
            subscriber,
            stop,
            pubsub_up,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn presence_member(user: &str, conn: &str) -> String {
    format!("{user}\0{conn}")
}

/// Pings Redis so outages and recoveries are noticed without traffic.
async fn health(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEALTH_PING);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut conn = shared.conn.clone();
        if let Err(e) = shared
            .run(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
        {
            tracing::debug!(error = %e, "redis ping failed");
        }
    }
}

/// Keeps this node's presence entries alive; entries of a dead node expire.
async fn refresh_presence(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PRESENCE_REFRESH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let entries: Vec<_> = lock(&shared.local_presence).iter().cloned().collect();
        if entries.is_empty() {
            continue;
        }
        let expiry = now_ms() + PRESENCE_TTL.as_millis() as u64;
        let mut pipe = redis::pipe();
        for (room, user, conn) in &entries {
            pipe.cmd("ZADD")
                .arg(shared.keys.presence_conns(room))
                .arg("XX")
                .arg(expiry)
                .arg(presence_member(user, conn))
                .ignore();
        }
        let mut conn = shared.conn.clone();
        if let Err(e) = shared.run(pipe.query_async::<()>(&mut conn)).await {
            tracing::warn!(error = %e, "presence refresh failed");
        }
    }
}

#[async_trait]
impl Broker for RedisEngine {
    async fn publish(&self, msg: Publish) -> Result<Published, EngineError> {
        let s = &self.shared;
        // The script completes the frame with seq, epoch and ts: split it around them.
        let (head, tail) = msg_frame_around_position(msg.content());
        let retention = s.retention(&msg.room);
        let mut conn = s.conn.clone();
        let (seq, epoch, dup): (u64, String, u8) = s
            .run(
                scripts::PUBLISH
                    .key(s.keys.meta(&msg.room))
                    .key(s.keys.stream(&msg.room))
                    .key(s.keys.dedup(&msg.room, &msg.from, &msg.msg_id))
                    .arg(s.keys.channel(&msg.room))
                    .arg(new_epoch())
                    .arg(head)
                    .arg(tail)
                    .arg(retention.max_messages)
                    .arg(retention.max_age.as_millis() as u64)
                    .arg(s.dedup_window.as_millis() as u64)
                    .arg(msg.traceparent.as_deref().unwrap_or("-"))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(Published {
            at: StreamPosition::new(epoch, seq),
            duplicate: dup == 1,
        })
    }
    async fn subscribe(&self, room: &str) -> Result<(), EngineError> {
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
impl PresenceManager for RedisEngine {
    async fn presence_join(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        let s = &self.shared;
        let expiry = now_ms() + PRESENCE_TTL.as_millis() as u64;
        let mut c = s.conn.clone();
        let _: i64 = s
            .run(
                scripts::PRESENCE_JOIN
                    .key(s.keys.presence_conns(room))
                    .key(s.keys.presence_users(room))
                    .arg(presence_member(user, conn))
                    .arg(user)
                    .arg(expiry)
                    .arg(s.keys.channel(room))
                    .arg(presence_frame(room, user, true))
                    .invoke_async(&mut c),
            )
            .await?;
        lock(&s.local_presence).insert((room.to_string(), user.to_string(), conn.to_string()));
        Ok(())
    }
    async fn presence_leave(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        let s = &self.shared;
        lock(&s.local_presence).remove(&(room.to_string(), user.to_string(), conn.to_string()));
        let mut c = s.conn.clone();
        let _: i64 = s
            .run(
                scripts::PRESENCE_LEAVE
                    .key(s.keys.presence_conns(room))
                    .key(s.keys.presence_users(room))
                    .arg(presence_member(user, conn))
                    .arg(user)
                    .arg(s.keys.channel(room))
                    .arg(presence_frame(room, user, false))
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(())
    }
    async fn presence(&self, room: &str) -> Result<Vec<String>, EngineError> {
        let s = &self.shared;
        let mut c = s.conn.clone();
        let users: Vec<String> = s
            .run(
                scripts::PRESENCE_LIST
                    .key(s.keys.presence_conns(room))
                    .key(s.keys.presence_users(room))
                    .arg(now_ms())
                    .arg(s.keys.channel(room))
                    .arg(room)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(users
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect())
    }
}

#[async_trait]
impl Sessions for RedisEngine {
    async fn save_session(&self, token: &str, session: &SessionRecord) -> Result<(), EngineError> {
        let s = &self.shared;
        let json =
            serde_json::to_string(session).map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut c = s.conn.clone();
        let _: () = s
            .run(c.pset_ex(
                s.keys.session(token),
                json,
                s.session_ttl.as_millis() as u64,
            ))
            .await?;
        Ok(())
    }
    async fn take_session(&self, token: &str) -> Result<Option<SessionRecord>, EngineError> {
        let s = &self.shared;
        let mut c = s.conn.clone();
        let json: Option<String> = s.run(c.get_del(s.keys.session(token))).await?;
        match json {
            None => Ok(None),
            Some(j) => serde_json::from_str(&j)
                .map(Some)
                .map_err(|e| EngineError::Internal(format!("stored session: {e}"))),
        }
    }
    async fn inbox_cursor(&self, user: &str) -> Result<u64, EngineError> {
        let s = &self.shared;
        let mut c = s.conn.clone();
        let v: Option<u64> = s.run(c.get(s.keys.inbox_cursor(user))).await?;
        Ok(v.unwrap_or(0))
    }
    async fn ack_inbox(&self, user: &str, seq: u64) -> Result<(), EngineError> {
        let s = &self.shared;
        let mut c = s.conn.clone();
        let _: i64 = s
            .run(
                scripts::MAX_SET
                    .key(s.keys.inbox_cursor(user))
                    .arg(seq)
                    .arg(s.inbox.max_age.as_millis() as u64 * 2)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Nodes for RedisEngine {
    async fn report_node(&self, r: &NodeReport) -> Result<(), EngineError> {
        let s = &self.shared;
        let mut c = s.conn.clone();
        let key = s.keys.node(&r.id);
        let json = serde_json::to_string(r).map_err(|e| EngineError::Internal(e.to_string()))?;
        let _: () = s
            .run(
                redis::pipe()
                    .pset_ex(&key, json, NODE_TTL.as_millis() as u64)
                    .ignore()
                    .zadd(s.keys.nodes(), &r.id, r.heartbeat)
                    .ignore()
                    .zrembyscore(
                        s.keys.nodes(),
                        "-inf",
                        r.heartbeat.saturating_sub(NODE_TTL.as_millis() as u64),
                    )
                    .ignore()
                    .query_async(&mut c),
            )
            .await?;
        Ok(())
    }
    async fn nodes(&self) -> Result<Vec<NodeReport>, EngineError> {
        let s = &self.shared;
        let mut c = s.conn.clone();
        let ids: Vec<String> = s.run(c.zrange(s.keys.nodes(), 0, -1)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| s.keys.node(id)).collect();
        let values: Vec<Option<String>> = s.run(c.mget(keys)).await?;
        let mut out: Vec<NodeReport> = values
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
    async fn admit(&self, rate: u32) -> Result<Option<bool>, EngineError> {
        let s = &self.shared;
        let key = s.keys.admission(now_ms() / 1000);
        let mut c = s.conn.clone();
        let (count,): (u64,) = s
            .run(
                redis::pipe()
                    .incr(&key, 1)
                    .pexpire(&key, 5000)
                    .ignore()
                    .query_async(&mut c),
            )
            .await?;
        Ok(Some(count <= u64::from(rate)))
    }
}

impl Engine for RedisEngine {
    fn healthy(&self) -> bool {
        let grace = self.shared.readiness_grace.as_millis() as u64;
        let now = now_ms();
        let within = |since: u64| since == 0 || now.saturating_sub(since) < grace;
        within(self.shared.down_since.load(Ordering::Relaxed))
            && within(self.shared.pubsub_down_since.load(Ordering::Relaxed))
    }
}
