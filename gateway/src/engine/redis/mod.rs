//! The Redis engine: any number of gateway processes sharing one Redis behave as one chat
//! service. Commands go through a [`ConnectionManager`] (reconnects by itself); room
//! traffic arrives on a dedicated pub/sub connection owned by the [`subscriber`] task.

mod payload;
mod repair;
mod scripts;
mod shared;
mod subscriber;

pub use payload::{parse_payload, Payload};

use super::{
    new_epoch, now_ms, Broker, Engine, EngineError, History, HistoryPage, HistoryQuery, NodeReport,
    Nodes, PresenceManager, Publish, Published, SessionRecord, Sessions,
};
use crate::config::{Config, Namespaces};
use crate::hub::Hub;
use crate::protocol::push::{msg_frame_around_position, presence_frame};
use crate::protocol::StreamPosition;
use async_trait::async_trait;
use redis::aio::ConnectionManagerConfig;
use redis::AsyncCommands;
use shared::{lock, Keys, Shared, SharedParts};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often presence entries of local connections are refreshed.
const PRESENCE_REFRESH: Duration = Duration::from_secs(10);
/// Presence entries not refreshed for this long are expired (a node died).
const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// A room's presence keys expire this long after the last refresh by any live node.
const PRESENCE_KEY_TTL: Duration = Duration::from_secs(90);
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
            .set_response_timeout(Some(shared::OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let shared = Arc::new(Shared::new(SharedParts {
            keys: Keys {
                prefix: config.redis.key_prefix.clone(),
            },
            client: client.clone(),
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
        let mut conn = shared.conn();
        if let Err(e) = shared
            .run(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
        {
            tracing::debug!(error = %e, "redis ping failed");
        }
    }
}

/// Keeps this node's presence entries alive and sweeps entries nobody refreshed (a
/// crashed node's); a room's presence keys expire once no live node refreshes them.
async fn refresh_presence(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PRESENCE_REFRESH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut by_room: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (room, user, member) in lock(&shared.local_presence).iter() {
            by_room
                .entry(room.clone())
                .or_default()
                .push(presence_member(user, member));
        }
        if by_room.is_empty() {
            continue;
        }
        let now = now_ms();
        let mut conn = shared.conn();
        // A pipeline does not load a missing script by itself (a restarted Redis).
        let loaded = shared
            .run(
                scripts::PRESENCE_SWEEP
                    .prepare_invoke()
                    .load_async(&mut conn),
            )
            .await;
        if let Err(e) = loaded {
            tracing::warn!(error = %e, "presence refresh failed");
            continue;
        }
        let mut pipe = redis::pipe();
        for (room, members) in &by_room {
            let mut call = scripts::PRESENCE_SWEEP.key(shared.keys.presence_conns(room));
            call.key(shared.keys.presence_users(room))
                .arg(now)
                .arg(now + PRESENCE_TTL.as_millis() as u64)
                .arg(PRESENCE_KEY_TTL.as_millis() as u64)
                .arg(shared.leave_channel(room))
                .arg(room);
            for m in members {
                call.arg(m);
            }
            pipe.invoke_script(&call).ignore();
        }
        if let Err(e) = shared.run(pipe.query_async::<()>(&mut conn)).await {
            tracing::warn!(error = %e, "presence refresh failed");
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
    // The script completes the frame with seq, epoch and ts: split it around them. A
    // traceparent that is not one would break the pub/sub payload for every member.
    let traceparent = msg
        .traceparent
        .as_deref()
        .filter(|t| crate::protocol::valid_traceparent(t));
    let content = crate::protocol::push::MsgContent {
        traceparent,
        ..msg.content()
    };
    let (head, tail) = msg_frame_around_position(content);
    let retention = s.retention(&msg.room);
    let seen = s.seen.get(&msg.room);
    let mut conn = s.conn();
    let (seq, epoch, code, ts): (u64, String, u8, u64) = s
        .run_write(
            scripts::PUBLISH
                .key(s.keys.meta(&msg.room))
                .key(s.keys.stream(&msg.room))
                .key(s.keys.dedup(&msg.room, &msg.from, &msg.msg_id))
                .key(s.keys.quota(&msg.room, &msg.from))
                .arg(s.keys.channel(&msg.room))
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
    let traceparent = msg
        .traceparent
        .as_deref()
        .filter(|t| crate::protocol::valid_traceparent(t));
    let env = super::Envelope::ephemeral(msg, now_ms());
    let payload = format!(
        "e {} {} {}",
        env.ts,
        traceparent.unwrap_or("-"),
        env.frame.as_str()
    );
    let mut conn = s.conn();
    let _: i64 = s
        .run_write(conn.publish(s.keys.channel(&msg.room), payload))
        .await?;
    Ok(Published::ephemeral())
}

#[async_trait]
impl Broker for RedisEngine {
    async fn publish(&self, msg: Publish) -> Result<Published, EngineError> {
        publish(&self.shared, &msg).await
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
        let ns = s.namespaces.of(room);
        if !ns.presence {
            return Ok(());
        }
        // An empty frame tells the script not to announce the join.
        let frame = if ns.join_leave_events {
            presence_frame(room, user, true)
        } else {
            String::new()
        };
        let expiry = now_ms() + PRESENCE_TTL.as_millis() as u64;
        let mut c = s.conn();
        let _: i64 = s
            .run(
                scripts::PRESENCE_JOIN
                    .key(s.keys.presence_conns(room))
                    .key(s.keys.presence_users(room))
                    .arg(presence_member(user, conn))
                    .arg(user)
                    .arg(expiry)
                    .arg(s.keys.channel(room))
                    .arg(frame)
                    .arg(PRESENCE_KEY_TTL.as_millis() as u64)
                    .invoke_async(&mut c),
            )
            .await?;
        lock(&s.local_presence).insert((room.to_string(), user.to_string(), conn.to_string()));
        Ok(())
    }
    async fn presence_leave(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        let s = &self.shared;
        let ns = s.namespaces.of(room);
        if !ns.presence {
            return Ok(());
        }
        let frame = if ns.join_leave_events {
            presence_frame(room, user, false)
        } else {
            String::new()
        };
        lock(&s.local_presence).remove(&(room.to_string(), user.to_string(), conn.to_string()));
        let mut c = s.conn();
        let _: i64 = s
            .run(
                scripts::PRESENCE_LEAVE
                    .key(s.keys.presence_conns(room))
                    .key(s.keys.presence_users(room))
                    .arg(presence_member(user, conn))
                    .arg(user)
                    .arg(s.keys.channel(room))
                    .arg(frame)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(())
    }
    async fn active_rooms(&self, limit: usize) -> Result<Vec<(String, usize)>, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        // Presence hashes are the rooms someone is in: SCAN them (an admin call, bounded
        // by `limit`; SCAN never blocks Redis for long).
        let pattern = s.keys.presence_users("*");
        let mut names = std::collections::BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = s
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c),
                )
                .await?;
            names.extend(keys.iter().filter_map(|k| s.keys.room_of_presence_users(k)));
            cursor = next;
            if cursor == 0 || names.len() >= limit {
                break;
            }
        }
        let names: Vec<String> = names.into_iter().take(limit).collect();
        let mut pipe = redis::pipe();
        for room in &names {
            pipe.hlen(s.keys.presence_users(room));
        }
        let counts: Vec<usize> = s.run(pipe.query_async(&mut c)).await?;
        Ok(names
            .into_iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .collect())
    }
    async fn is_present(&self, room: &str, user: &str) -> Result<bool, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        s.run(c.hexists(s.keys.presence_users(room), user)).await
    }
    async fn presence(&self, room: &str) -> Result<Vec<String>, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        let users: Vec<String> = s
            .run(
                scripts::PRESENCE_SWEEP
                    .key(s.keys.presence_conns(room))
                    .key(s.keys.presence_users(room))
                    .arg(now_ms())
                    .arg(0)
                    .arg(0)
                    .arg(s.leave_channel(room))
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
        let mut c = s.conn();
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
        let mut c = s.conn();
        let json: Option<String> = s.run(c.get_del(s.keys.session(token))).await?;
        match json {
            None => Ok(None),
            Some(j) => serde_json::from_str(&j)
                .map(Some)
                .map_err(|e| EngineError::Internal(format!("stored session: {e}"))),
        }
    }
    async fn inbox_cursor(&self, user: &str) -> Result<Option<StreamPosition>, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        let v: Option<String> = s.run(c.get(s.keys.inbox_cursor(user))).await?;
        // "<seq> <epoch>"; anything else (a cursor of an older version) counts as none.
        Ok(v.and_then(|v| {
            let (seq, epoch) = v.split_once(' ')?;
            Some(StreamPosition::new(epoch, seq.parse().ok()?))
        }))
    }
    async fn ack_inbox(&self, user: &str, at: &StreamPosition) -> Result<(), EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        let _: i64 = s
            .run(
                scripts::INBOX_ACK
                    .key(s.keys.inbox_cursor(user))
                    .arg(at.seq)
                    .arg(&*at.epoch)
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
        let mut c = s.conn();
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
        let mut c = s.conn();
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
        let mut c = s.conn();
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

#[async_trait]
impl Engine for RedisEngine {
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
