//! Node: the state one gateway process shares between its connections.

use crate::auth::Authenticator;
use crate::client_ip::limit_key;
use crate::config::Namespaces;
use crate::config::{Config, EngineKind};
use crate::connection::session::Hex;
use crate::control::{ConnCtl, SessionCtl};
use crate::disconnect::CloseReason;
use crate::ended_sessions::EndedSessions;
use crate::engine::redis::{RedisCounters, RedisEngine};
use crate::engine::{memory::MemoryEngine, Engine};
use crate::hub::{ConnId, Hub};
use crate::log_gate::warn_gated;
use crate::metrics::Metrics;
use crate::outbound::OutboundQueue;
use crate::ratelimit::KeyedBuckets;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

mod slots;
pub use slots::{Slot, Slots};

/// Builds an engine delivering into the node's hub (instead of the configured one).
type MakeEngine = Box<dyn FnOnce(Arc<Hub>) -> Arc<dyn Engine>>;

/// Shared state of a gateway process.
pub struct Node {
    /// Node id (pod name) announced in `welcome`.
    pub id: String,
    /// Effective configuration.
    pub config: Config,
    /// Broker, history, presence, sessions.
    pub engine: Arc<dyn Engine>,
    /// Local room subscribers.
    pub hub: Arc<Hub>,
    /// Deferred presence leaves (`limits.presenceLinger`).
    pub linger: Arc<crate::linger::Linger>,
    /// Upgrade authentication.
    pub auth: Authenticator,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// WebSocket forwarding routes.
    pub router: crate::forward::Router,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
    /// Set when a drain starts: readiness fails from then on.
    pub draining: std::sync::atomic::AtomicBool,
    /// Cleared when the drain's accept grace is over: upgrades get 503 from then on.
    pub accepting: std::sync::atomic::AtomicBool,
    /// Set once the node listens on the control plane (`control::run`).
    pub control_ready: std::sync::atomic::AtomicBool,
    /// Admission window (memory engine): (unix second, admitted in it).
    admission: Mutex<(u64, u32)>,
    /// Per-IP and per-user admission buckets (checked before the shared rate).
    ip_buckets: Mutex<KeyedBuckets<IpAddr>>,
    user_buckets: Mutex<KeyedBuckets<String>>,
    conns: Mutex<HashMap<ConnId, Registered>>,
    /// Set by [`close_all`](Self::close_all), under the `conns` lock: a connection that
    /// registers later (its connect hook answered after the drain ended) is closed too.
    closed_all: std::sync::OnceLock<CloseReason>,
    queue_high_water: std::sync::atomic::AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    handshakes_per_ip: Mutex<HashMap<IpAddr, u32>>,
    per_user: Mutex<HashMap<String, u32>>,
    /// Sessions of ended connections this node stored (`sessions.keptPerUser`).
    ended: Mutex<EndedSessions<Hex<16>>>,
    /// Rooms and inboxes each user's sends started (`limits.newRoomsPerHour`).
    pub room_starts: crate::room_starts::RoomStarts,
    /// Commands of each user, all their connections together (`limits.userMessageRate`).
    user_commands: Mutex<KeyedBuckets<String>>,
    next_conn: AtomicU64,
    /// Room namespaces (permissions and storage rules per room-name prefix).
    pub namespaces: Namespaces,
    /// Hooks on the application's backend.
    pub hooks: crate::hooks::Hooks,
    /// One line a period for what a connection failed to do (its session not saved, its
    /// inbox not subscribed or replayed, a room not replayed or unsubscribed, a connect
    /// hook's room not joined): a Redis outage, or a backend naming a bad room, fails it
    /// for every connection at once (measured: 500 connections closing, 500 `session not
    /// saved` lines). The engine logs the cause itself.
    pub connection_failure_log: crate::log_gate::LogGate,
    /// Counts a delivery; one for all connections (it only touches the node's metrics).
    pub on_delivered: crate::outbound::OnDelivered,
    /// The node's clock starts here (see [`clock_ms`](Self::clock_ms)).
    started: tokio::time::Instant,
}

/// Most keys each per-key bucket map (admission, new rooms, user commands) tracks (about
/// 100 bytes each); past it a new key is not limited.
const MAX_BUCKET_KEYS: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection as the node knows it.
struct Registered {
    queue: OutboundQueue,
    user: Arc<str>,
    ctl: Option<Arc<ConnCtl>>,
}

impl Node {
    /// Builds the node and its engine from config.
    pub fn new(config: Config, shutdown: CancellationToken) -> anyhow::Result<Arc<Node>> {
        Node::build(config, shutdown, None)
    }

    /// A node on an engine made by `make` (tests: an engine that fails on demand).
    #[cfg(any(test, feature = "testing"))]
    pub fn with_engine(
        config: Config,
        make: impl FnOnce(Arc<Hub>) -> Arc<dyn Engine> + 'static,
    ) -> anyhow::Result<Arc<Node>> {
        Node::build(config, CancellationToken::new(), Some(Box::new(make)))
    }

    fn build(
        config: Config,
        shutdown: CancellationToken,
        make: Option<MakeEngine>,
    ) -> anyhow::Result<Arc<Node>> {
        config.validate()?;
        let auth = Authenticator::new(&config)?;
        let a = &config.admission;
        let ip_buckets = KeyedBuckets::new(a.per_ip_rate, a.per_ip_burst, MAX_BUCKET_KEYS);
        let user_buckets = KeyedBuckets::new(a.per_user_rate, a.per_user_burst, MAX_BUCKET_KEYS);
        let l = &config.limits;
        let user_commands =
            KeyedBuckets::new(l.user_message_rate, l.user_message_burst, MAX_BUCKET_KEYS);
        let metrics = Metrics::new();
        let hub = Arc::new(
            Hub::new(config.limits.presence_batch, config.limits.fanout_batch)
                .counting(metrics.deliveries()),
        );
        let router = crate::forward::Router::new(&config.routes).map_err(anyhow::Error::msg)?;
        let engine: Arc<dyn Engine> = match (make, config.engine) {
            (Some(make), _) => make(hub.clone()),
            (None, EngineKind::Memory) => Arc::new(MemoryEngine::counting(
                hub.clone(),
                &config,
                metrics.memory_engine(),
            )),
            (None, EngineKind::Redis) => {
                let counters = RedisCounters {
                    errors: metrics.redis_errors.clone(),
                    reconnects: metrics.redis_reconnects.clone(),
                };
                Arc::new(RedisEngine::new(hub.clone(), &config, counters)?)
            }
        };
        let linger = crate::linger::Linger::new(engine.clone(), config.limits.presence_linger);
        let s = &config.sessions;
        let ended = EndedSessions::new(s.kept_per_user as usize, s.resume_ttl.as_millis() as u64);
        Ok(Arc::new(Node {
            id: node_id(&config),
            namespaces: Namespaces::new(&config.namespaces),
            hooks: crate::hooks::Hooks::new(&config.hooks, &metrics),
            connection_failure_log: Default::default(),
            on_delivered: crate::connection::count_deliveries(&metrics),
            ip_buckets: Mutex::new(ip_buckets),
            user_buckets: Mutex::new(user_buckets),
            room_starts: crate::room_starts::RoomStarts::new(
                config.limits.new_rooms_per_hour,
                MAX_BUCKET_KEYS,
            ),
            user_commands: Mutex::new(user_commands),
            per_user: Mutex::new(HashMap::new()),
            config,
            engine,
            hub,
            linger,
            auth,
            metrics,
            router,
            shutdown,
            draining: Default::default(),
            accepting: std::sync::atomic::AtomicBool::new(true),
            control_ready: Default::default(),
            admission: Mutex::new((0, 0)),
            conns: Mutex::new(HashMap::new()),
            closed_all: std::sync::OnceLock::new(),
            queue_high_water: Default::default(),
            per_ip: Mutex::new(HashMap::new()),
            handshakes_per_ip: Mutex::new(HashMap::new()),
            ended: Mutex::new(ended),
            next_conn: AtomicU64::new(1),
            started: tokio::time::Instant::now(),
        }))
    }

    /// One upgrade attempt from `ip` against its client's ([`limit_key`]) admission bucket.
    pub fn admit_ip(&self, ip: IpAddr) -> bool {
        lock(&self.ip_buckets).take_at(&limit_key(ip), std::time::Instant::now())
    }

    /// One upgrade of `user` against its admission bucket.
    pub fn admit_user(&self, user: &str) -> bool {
        lock(&self.user_buckets).take_at(user, std::time::Instant::now())
    }

    /// One command of `user` against `limits.userMessageRate`, which all the user's
    /// connections on this node share (each also has its own `messageRate`).
    pub fn take_user_command(&self, user: &str) -> bool {
        lock(&self.user_commands).take_at(user, std::time::Instant::now())
    }

    /// A connection of `user` ended and stored its session under `token`. When that makes
    /// one more than `sessions.keptPerUser` ended sessions of the user stored by this node,
    /// the oldest is dropped from the store: a user reconnecting in a loop would otherwise
    /// keep `admission.perUserRate` × `sessions.resumeTtl` of them.
    pub async fn session_ended(&self, user: &str, token: Hex<16>) {
        let oldest = lock(&self.ended).record(user, token, self.clock_ms());
        let Some(oldest) = oldest else { return };
        self.metrics.sessions_dropped.inc();
        if let Err(e) = self.engine.drop_session(&oldest.to_string(), user).await {
            let msg = "the oldest ended session (past sessions.keptPerUser) not dropped";
            warn_gated!(self.connection_failure_log, %user, error = %e, "{msg}");
        }
    }

    /// `user` resumed the session stored under `token`: it no longer counts as one of the
    /// user's ended sessions here.
    pub fn session_resumed(&self, user: &str, token: &str) {
        if let Some(token) = Hex::parse(token) {
            lock(&self.ended).taken(user, &token);
        }
    }

    /// Registers a connection of `user` so the node can close it (drain, the server API);
    /// a chat connection also gets a control mailbox (`ctl`). Returns its id.
    pub fn register(&self, queue: OutboundQueue, user: &str, ctl: Option<Arc<ConnCtl>>) -> ConnId {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut conns = lock(&self.conns);
        if let Some(reason) = self.closed_all.get() {
            queue.close(*reason);
        }
        let entry = Registered {
            queue,
            user: user.into(),
            ctl,
        };
        conns.insert(id, entry);
        drop(conns);
        self.metrics.connections.inc();
        id
    }

    /// Milliseconds since the node started: when its connections were last heard from.
    /// The runtime's clock, which tests can pause.
    pub fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Calls `visit` with the queue of each chat connection (not the forwarded ones)
    /// whose id is `slice` modulo `slices`: the [`heartbeat`](crate::heartbeat)'s round.
    /// In place, under the registry's lock: a clone of each queue would take its lock
    /// twice more, for a ping or a close that takes it once.
    pub fn each_chat_queue(&self, slice: u64, slices: u64, mut visit: impl FnMut(&OutboundQueue)) {
        for (_, c) in lock(&self.conns)
            .iter()
            .filter(|(id, c)| *id % slices.max(1) == slice && c.ctl.is_some())
        {
            visit(&c.queue);
        }
    }

    /// Tells every chat connection that new verification keys are in force: those whose
    /// token's key is gone close (see [`reload_keys`]). A walk over the connections
    /// rather than a channel each connection waits on, which every idle connection's task
    /// would carry for a rare event.
    pub fn tell_keys_changed(&self) {
        for ctl in lock(&self.conns).values().filter_map(|c| c.ctl.as_ref()) {
            ctl.keys_changed();
        }
    }

    /// Calls `visit` with the connections of `user` on this node, under the registry's lock.
    fn of_user<R>(
        &self,
        user: &str,
        visit: impl FnOnce(&mut dyn Iterator<Item = &Registered>) -> R,
    ) -> R {
        let conns = lock(&self.conns);
        visit(&mut conns.values().filter(|c| &*c.user == user))
    }

    /// Closes every connection of `user` on this node; returns how many.
    pub fn close_user(&self, user: &str, reason: CloseReason) -> usize {
        self.of_user(user, |conns| conns.map(|c| c.queue.close(reason)).count())
    }

    /// Closes the chat connection of `user` whose session has resume token `token`, if it
    /// is on this node.
    pub fn close_session(&self, user: &str, token: &Hex<16>, reason: CloseReason) {
        self.of_user(user, |conns| {
            for c in conns {
                if c.ctl.as_ref().is_some_and(|ctl| ctl.resume_token == *token) {
                    c.queue.close(reason);
                    return;
                }
            }
        })
    }

    /// Tells every chat connection of `user` on this node; returns how many.
    pub fn tell_user(&self, user: &str, msg: SessionCtl) -> usize {
        self.of_user(user, |conns| {
            conns
                .filter_map(|c| c.ctl.as_ref())
                .map(|ctl| ctl.tell(msg.clone()))
                .count()
        })
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: ConnId) {
        if let Some(Registered { queue: q, .. }) = lock(&self.conns).remove(&id) {
            self.metrics.connections.dec();
            let hw = self
                .queue_high_water
                .fetch_max(q.high_water_bytes(), Ordering::Relaxed)
                .max(q.high_water_bytes());
            self.metrics.queue_high_water.set(hw as i64);
        }
    }

    /// Most bytes ever queued for one closed connection of this node.
    pub fn queue_high_water(&self) -> usize {
        self.queue_high_water.load(Ordering::Relaxed)
    }

    /// Open connections on this node.
    pub fn connection_count(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Asks every open connection to close, and every one that registers from now on
    /// (the node is ending: the drain's deadline, shutdown). Returns how many of them had
    /// not been told to go (a `goaway`) nor were closing already.
    pub fn close_all(&self, reason: CloseReason) -> u64 {
        let conns = lock(&self.conns);
        let _ = self.closed_all.set(reason);
        let mut untold = 0;
        for c in conns.values() {
            if !c.queue.told_to_go() && !c.queue.is_closing() {
                untold += 1;
            }
            c.queue.close(reason);
        }
        untold
    }

    /// Whether the node should receive traffic.
    pub fn ready(&self) -> bool {
        !self.shutdown.is_cancelled()
            && !self.is_draining()
            && self.engine.healthy()
            && self.control_ready.load(Ordering::Relaxed)
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether new upgrades are accepted (false once the drain's accept grace is over).
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed) && !self.shutdown.is_cancelled()
    }

    /// A connection that has not been told to go yet (for drain and rebalance).
    pub fn pick_connection(&self) -> Option<OutboundQueue> {
        lock(&self.conns)
            .values()
            .map(|c| &c.queue)
            .find(|q| !q.told_to_go())
            .cloned()
    }

    /// Admits one new connection under `admission.rate`: cluster-wide through the engine
    /// when it can count (Redis), else per node. Fails open when the engine cannot answer.
    pub async fn admit(&self) -> bool {
        let rate = self.config.admission.rate;
        if rate == 0 {
            return true;
        }
        match self.engine.admit(rate).await {
            Ok(Some(admitted)) => admitted,
            Ok(None) | Err(_) => {
                let now = crate::engine::now_ms() / 1000;
                let mut w = lock(&self.admission);
                if w.0 != now {
                    *w = (now, 0);
                }
                w.1 += 1;
                w.1 <= rate
            }
        }
    }
}

fn node_id(config: &Config) -> String {
    if !config.node.id.is_empty() {
        return config.node.id.clone();
    }
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()))
}

/// Re-reads the JWT key files every `auth.jwt.reloadInterval` until shutdown; when new
/// keys are in force, tells every connection (those verified by a removed `kid` close).
pub async fn reload_keys(node: Arc<Node>) {
    if node.auth.insecure() {
        return;
    }
    let mut tick = tokio::time::interval(node.auth.reload_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match node.auth.reload() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!("new JWT verification keys in force");
                node.metrics
                    .key_reloads
                    .with_label_values(&["changed"])
                    .inc();
                node.tell_keys_changed();
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWT keys not reloaded; the keys in force stay");
                node.metrics
                    .key_reloads
                    .with_label_values(&["failed"])
                    .inc();
            }
        }
    }
}
