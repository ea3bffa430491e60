//! Node: the state one gateway process shares between its connections.

use crate::auth::Authenticator;
use crate::config::{Config, EngineKind};
use crate::disconnect::CloseReason;
use crate::engine::redis::{RedisCounters, RedisEngine};
use crate::engine::{memory::MemoryEngine, Engine};
use crate::hub::{ConnId, Hub};
use crate::metrics::Metrics;
use crate::outbound::OutboundQueue;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

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
    /// Admission window (memory engine): (unix second, admitted in it).
    admission: Mutex<(u64, u32)>,
    conns: Mutex<HashMap<ConnId, OutboundQueue>>,
    queue_high_water: std::sync::atomic::AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Holds one connection slot of a client IP; frees it on drop.
pub struct IpSlot {
    node: Arc<Node>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.node.per_ip);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Node {
    /// Builds the node and its engine from config.
    pub fn new(config: Config, shutdown: CancellationToken) -> anyhow::Result<Arc<Node>> {
        config.validate()?;
        let auth = Authenticator::new(&config.auth)?;
        let hub = Arc::new(Hub::default());
        let metrics = Metrics::new();
        let router = crate::forward::Router::new(&config.routes).map_err(anyhow::Error::msg)?;
        let engine: Arc<dyn Engine> = match config.engine {
            EngineKind::Memory => Arc::new(MemoryEngine::new(hub.clone(), &config)),
            EngineKind::Redis => {
                let counters = RedisCounters {
                    errors: metrics.redis_errors.clone(),
                    reconnects: metrics.redis_reconnects.clone(),
                };
                Arc::new(RedisEngine::new(hub.clone(), &config, counters)?)
            }
        };
        Ok(Arc::new(Node {
            id: node_id(&config),
            config,
            engine,
            hub,
            auth,
            metrics,
            router,
            shutdown,
            draining: Default::default(),
            accepting: std::sync::atomic::AtomicBool::new(true),
            admission: Mutex::new((0, 0)),
            conns: Mutex::new(HashMap::new()),
            queue_high_water: Default::default(),
            per_ip: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        }))
    }

    /// Takes a connection slot for `ip`, or None when the IP is at its limit.
    pub fn take_ip_slot(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let limit = self.config.limits.connections_per_ip;
        let mut map = lock(&self.per_ip);
        let n = map.entry(ip).or_insert(0);
        if limit > 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            node: self.clone(),
            ip,
        })
    }

    /// Registers a connection's queue so the node can close it; returns its id.
    pub fn register(&self, queue: OutboundQueue) -> ConnId {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        lock(&self.conns).insert(id, queue);
        self.metrics.connections.inc();
        id
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: ConnId) {
        if let Some(q) = lock(&self.conns).remove(&id) {
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

    /// Asks every open connection to close.
    pub fn close_all(&self, reason: CloseReason) {
        for q in lock(&self.conns).values() {
            q.close(reason);
        }
    }

    /// Whether the node should receive traffic.
    pub fn ready(&self) -> bool {
        !self.shutdown.is_cancelled() && !self.is_draining() && self.engine.healthy()
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
