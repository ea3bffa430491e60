//! What the Redis engine and its background tasks share: the command connection, the
//! deadline every operation runs under, and the history read (which the subscriber also
//! uses to fill gaps). Key and channel names are in [`keys`](super::keys).

use super::conn::{Backend, Conn};
use super::failure::{Effect, Failure};
use super::keys::Keys;
use super::scripts;
use crate::config::{Namespaces, RetentionConfig};
use crate::engine::seen::SeenTops;
use crate::engine::{
    new_epoch, now_ms, EngineError, Envelope, HistoryPage, HistoryQuery, EMPTY_EPOCH,
};
use crate::hub::Hub;
use crate::log_gate::{warn_gated, LogGate};
use redis::aio::ConnectionManagerConfig;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Longest wait for one Redis operation (and for a pub/sub subscribe, unsubscribe, ping
/// or connect) before answering `unavailable` (or `unknown_outcome` for a write).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared by the engine and its background tasks.
pub(crate) struct Shared {
    pub(crate) keys: Keys,
    /// Where Redis is (one server, a cluster, or the master Sentinel names).
    pub(crate) backend: Backend,
    manager_config: ConnectionManagerConfig,
    /// The command connection; replaced when Redis stopped answering (see [`Shared::run`])
    /// and when Sentinel names another master.
    conn: Mutex<Conn>,
    /// Unix ms of the last replacement of `conn`.
    replaced_at: AtomicU64,
    pub(crate) hub: Arc<Hub>,
    pub(crate) history: RetentionConfig,
    pub(crate) inbox: RetentionConfig,
    pub(crate) namespaces: Namespaces,
    pub(crate) dedup_window: Duration,
    pub(crate) session_ttl: Duration,
    /// Unix ms since when Redis has been failing (0 = healthy).
    pub(crate) down_since: AtomicU64,
    pub(crate) readiness_grace: Duration,
    /// (room, user, member) present through this node, refreshed periodically.
    pub(crate) local_presence: Mutex<HashSet<(String, String, String)>>,
    /// Unix ms since when the pub/sub connection has been down (0 = up).
    pub(crate) pubsub_down_since: AtomicU64,
    /// Counts of Redis errors and reconnects (metrics).
    pub(crate) errors: prometheus::IntCounter,
    pub(crate) reconnects: prometheus::IntCounter,
    /// What this node has seen of each room (the epoch rule's witness).
    pub(crate) seen: SeenTops,
    /// Bumped when Sentinel names another master: the subscriber moves to it.
    pub(crate) generation: AtomicU64,
    /// Failed operations' log lines (one a period).
    failure_log: LogGate,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Shared::new`] needs besides the config sections it copies.
pub(crate) struct SharedParts {
    pub keys: Keys,
    pub backend: Backend,
    pub manager_config: ConnectionManagerConfig,
    pub hub: Arc<Hub>,
    pub history: RetentionConfig,
    pub inbox: RetentionConfig,
    pub namespaces: Namespaces,
    pub dedup_window: Duration,
    pub session_ttl: Duration,
    pub readiness_grace: Duration,
    pub pubsub_down_since: u64,
    pub errors: prometheus::IntCounter,
    pub reconnects: prometheus::IntCounter,
}

impl Shared {
    pub(crate) fn new(p: SharedParts) -> Result<Shared, EngineError> {
        let conn = p.backend.connect(&p.manager_config)?;
        Ok(Shared {
            keys: p.keys,
            backend: p.backend,
            manager_config: p.manager_config,
            conn: Mutex::new(conn),
            replaced_at: AtomicU64::new(now_ms()),
            hub: p.hub,
            history: p.history,
            inbox: p.inbox,
            namespaces: p.namespaces,
            dedup_window: p.dedup_window,
            session_ttl: p.session_ttl,
            down_since: AtomicU64::new(0),
            readiness_grace: p.readiness_grace,
            local_presence: Mutex::new(HashSet::new()),
            pubsub_down_since: AtomicU64::new(p.pubsub_down_since),
            errors: p.errors,
            reconnects: p.reconnects,
            seen: SeenTops::default(),
            generation: AtomicU64::new(0),
            failure_log: LogGate::default(),
        })
    }

    /// A handle on the command connection (cheap; clones share the connection).
    pub(crate) fn conn(&self) -> Conn {
        lock(&self.conn).clone()
    }

    /// Replaces the command connection with a fresh one (Sentinel named a new master).
    pub(crate) fn reconnect(&self) {
        match self.backend.connect(&self.manager_config) {
            Ok(fresh) => {
                *lock(&self.conn) = fresh;
                self.replaced_at.store(now_ms(), Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot replace the redis connection"),
        }
    }

    pub(crate) fn retention(&self, room: &str) -> &RetentionConfig {
        crate::engine::retention(&self.namespaces, room, &self.history, &self.inbox)
    }

    fn mark_down(&self) {
        self.errors.inc();
        let _ = self.down_since.compare_exchange(
            0,
            now_ms().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn ok(&self) {
        self.down_since.store(0, Ordering::Relaxed);
    }

    /// Redis asked and silent: after `readinessGrace` of that, the command connection is
    /// replaced (at most once per grace). A TCP connection into a black hole (the peer
    /// vanished without a reset) otherwise only fails after the kernel's retransmission
    /// timeout, many minutes later, even when Redis answers again on a new connection.
    fn unanswered(&self) {
        let grace = self.readiness_grace.as_millis() as u64;
        let now = now_ms();
        let since = self.down_since.load(Ordering::Relaxed);
        let replaced = self.replaced_at.load(Ordering::Relaxed);
        if since == 0 || now.saturating_sub(since) < grace || now.saturating_sub(replaced) < grace {
            return;
        }
        if self
            .replaced_at
            .compare_exchange(replaced, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another call replaces it
        }
        match self.backend.connect(&self.manager_config) {
            Ok(fresh) => {
                *lock(&self.conn) = fresh;
                tracing::warn!("redis did not answer for {grace} ms; replaced the connection");
            }
            Err(e) => tracing::warn!(error = %e, "cannot replace the redis connection"),
        }
    }

    async fn attempt<T>(
        &self,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Failure> {
        let failure = match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => {
                self.ok();
                return Ok(v);
            }
            Ok(Err(e)) => {
                let failure = self.note_failure("redis operation", &e);
                self.mark_down();
                if failure.redis_up() {
                    self.ok();
                }
                if e.is_timeout() {
                    self.unanswered();
                }
                failure
            }
            Err(_) => {
                self.mark_down();
                self.log_failure("redis operation", Effect::Unknown, &Failure::TIMED_OUT.told);
                self.unanswered();
                Failure::TIMED_OUT
            }
        };
        Err(failure)
    }

    /// Logs a failed operation (`what`), one line a period, and says what it means.
    pub(super) fn note_failure(&self, what: &str, e: &redis::RedisError) -> Failure {
        let failure = Failure::of(e);
        self.log_failure(what, failure.effect, e);
        failure
    }

    fn log_failure(&self, what: &str, effect: Effect, error: &dyn std::fmt::Display) {
        let outcome = effect.name();
        warn_gated!(self.failure_log, %error, outcome, "{what} failed");
    }

    /// Runs one Redis operation with a deadline: a stalled or unreachable Redis turns into
    /// `unavailable` within [`OP_TIMEOUT`] instead of a hanging command.
    pub(crate) async fn run<T>(
        &self,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, EngineError> {
        self.attempt(op).await.map_err(|f| match f.effect {
            Effect::NotRun | Effect::Unknown => EngineError::Unavailable(f.told.into()),
            Effect::Error => EngineError::Internal(f.told.into()),
        })
    }

    /// Like [`run`](Self::run) for a write that must not be repeated blindly: when Redis
    /// was asked but did not answer, the error says the outcome is unknown.
    pub(crate) async fn run_write<T>(
        &self,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, EngineError> {
        self.attempt(op).await.map_err(|f| match f.effect {
            Effect::NotRun => EngineError::Unavailable(f.told.into()),
            Effect::Unknown => EngineError::UnknownOutcome(f.told.into()),
            Effect::Error => EngineError::Internal(f.told.into()),
        })
    }

    /// Where a SCAN must run to see every key: the one server, or every master of a
    /// cluster (from `CLUSTER SLOTS`).
    pub(crate) async fn scan_targets(&self) -> Result<Vec<Option<(String, u16)>>, EngineError> {
        if !self.keys.cluster {
            return Ok(vec![None]);
        }
        let mut conn = self.conn();
        let slots: Vec<redis::Value> = self
            .run(redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn))
            .await?;
        let mut masters = std::collections::BTreeSet::new();
        for range in slots {
            // [start, end, [host, port, id, ...], replicas...]
            let parts: Vec<redis::Value> = redis::from_redis_value(range).unwrap_or_default();
            if let Some(master) = parts.into_iter().nth(2) {
                let node: (String, u16) = redis::from_redis_value::<Vec<redis::Value>>(master)
                    .ok()
                    .and_then(|n| {
                        let mut it = n.into_iter();
                        let host = redis::from_redis_value(it.next()?).ok()?;
                        let port = redis::from_redis_value(it.next()?).ok()?;
                        Some((host, port))
                    })
                    .ok_or_else(|| {
                        EngineError::Internal("unexpected CLUSTER SLOTS reply".into())
                    })?;
                masters.insert(node);
            }
        }
        Ok(masters.into_iter().map(Some).collect())
    }

    /// SCANs one node (`None`: the one server) for `pattern`, handing each key to `seen`,
    /// which returns how many it has collected; stops at `limit` of those.
    pub(crate) async fn scan_into(
        &self,
        node: Option<(String, u16)>,
        pattern: &str,
        limit: usize,
        seen: &mut (dyn FnMut(&str) -> usize + Send),
    ) -> Result<(), EngineError> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let mut conn = self.conn();
            let reply: (u64, Vec<String>) = match (&node, &mut conn) {
                (Some((host, port)), Conn::Cluster(c)) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    let v = self.run(c.route_command(cmd, routing)).await?;
                    redis::from_redis_value(v)
                        .map_err(|e| EngineError::Internal(format!("SCAN reply: {e}")))?
                }
                _ => self.run(cmd.query_async(&mut conn)).await?,
            };
            let mut n = 0;
            for k in &reply.1 {
                n = seen(k);
            }
            cursor = reply.0;
            if cursor == 0 || n >= limit {
                return Ok(());
            }
        }
    }

    /// Meta keys live this long past the last message (an idle room keeps its epoch).
    pub(crate) fn meta_ttl_ms(&self, room: &str) -> u64 {
        self.retention(room).max_age.as_millis() as u64 * 2 + 604_800_000
    }

    /// Reads history (also used by the subscriber to fill gaps after a reconnect). A page
    /// showing the store behind what this node saw starts a new epoch first (the rule).
    pub(crate) async fn history(
        &self,
        room: &str,
        q: HistoryQuery,
    ) -> Result<HistoryPage, EngineError> {
        let page = match self.unless_behind(room, self.read_history(room, q).await?) {
            Ok(page) => return Ok(page),
            Err(behind) => behind,
        };
        let seen = self.seen.get(room).map_or(0, |s| s.seq);
        self.bump_epoch(room, &page.epoch, seen).await?;
        let page = self.read_history(room, q).await?;
        if *page.epoch != *EMPTY_EPOCH {
            self.seen.observe(room, &page.epoch, page.top);
        }
        Ok(page)
    }

    /// A page read from the store, noted as seen; or back as `Err` when it shows the store
    /// behind what this node saw (the epoch rule is then the caller's to apply).
    pub(crate) fn unless_behind(
        &self,
        room: &str,
        page: HistoryPage,
    ) -> Result<HistoryPage, HistoryPage> {
        if self.seen.behind(room, &page.epoch, page.top) {
            return Err(page);
        }
        if *page.epoch != *EMPTY_EPOCH {
            self.seen.observe(room, &page.epoch, page.top);
        }
        Ok(page)
    }

    /// Starts a new epoch for `room` if it is still in `epoch` below `seen` (the rule);
    /// returns the room's epoch afterwards and whether this call started it.
    pub(crate) async fn bump_epoch(
        &self,
        room: &str,
        epoch: &str,
        seen: u64,
    ) -> Result<(bool, String), EngineError> {
        let mut conn = self.conn();
        let (bumped, now_epoch): (u8, String) = self
            .run(
                scripts::EPOCH_BUMP
                    .key(self.keys.meta(room))
                    .key(self.keys.stream(room))
                    .arg(epoch)
                    .arg(seen)
                    .arg(new_epoch())
                    .arg(self.meta_ttl_ms(room))
                    .invoke_async(&mut conn),
            )
            .await?;
        if bumped == 1 {
            tracing::warn!(room, old_epoch = epoch, seen, new_epoch = %now_epoch,
                "redis is behind what this node saw (older snapshot or lagging replica): new epoch");
            self.seen.observe(room, &now_epoch, 0);
        }
        Ok((bumped == 1, now_epoch))
    }

    async fn read_history(&self, room: &str, q: HistoryQuery) -> Result<HistoryPage, EngineError> {
        // Nothing comes before seq 1 or after the largest seq a client can name: an empty
        // page (with the room's head), not an id that overflows.
        let empty = matches!(q.before, Some(b) if b <= 1) || q.since == Some(u64::MAX);
        let after = |s: u64| format!("{}-0", s.saturating_add(1));
        let (start, end, reverse) = match (q.since, q.before) {
            _ if empty => ("-".to_string(), "-".to_string(), false),
            (Some(s), Some(b)) => (after(s), format!("{}-1", b - 1), false),
            (Some(s), None) => (after(s), "+".to_string(), false),
            (None, Some(b)) => ("-".to_string(), format!("{}-1", b - 1), true),
            (None, None) => ("-".to_string(), "+".to_string(), true),
        };
        let limit = if empty { 0 } else { q.limit.min(1_000_000) };
        let max_age = self.retention(room).max_age.as_millis() as u64;
        let mut conn = self.conn();
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
                    .arg(q.max_bytes)
                    .invoke_async(&mut conn),
            )
            .await?;
        parse_history(room, raw)
    }
}

pub(super) fn parse_history(
    room: &str,
    raw: Vec<redis::Value>,
) -> Result<HistoryPage, EngineError> {
    let bad = || EngineError::Internal("unexpected history reply from redis".into());
    let mut it = raw.into_iter();
    let mut next = || it.next().ok_or_else(bad);
    let epoch: String = redis::from_redis_value(next()?).map_err(|_| bad())?;
    let top: u64 = redis::from_redis_value(next()?).map_err(|_| bad())?;
    let first: u64 = redis::from_redis_value(next()?).map_err(|_| bad())?;
    let more: u8 = redis::from_redis_value(next()?).map_err(|_| bad())?;
    if epoch.is_empty() {
        return Ok(HistoryPage::empty());
    }
    let epoch: Arc<str> = epoch.into();
    let room: Arc<str> = room.into();
    let mut messages = Vec::new();
    while let (Some(seq), Some(frame)) = (it.next(), it.next()) {
        let seq: u64 = redis::from_redis_value(seq).map_err(|_| bad())?;
        let frame: String = redis::from_redis_value(frame).map_err(|_| bad())?;
        messages.push(Arc::new(Envelope::new(
            room.clone(),
            seq,
            epoch.clone(),
            0,
            None,
            &frame,
        )));
    }
    Ok(HistoryPage {
        epoch,
        top,
        first,
        messages,
        more: more == 1,
    })
}
