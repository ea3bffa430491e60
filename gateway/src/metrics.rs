//! Prometheus metrics of a gateway node.

mod deliveries;
#[cfg(test)]
mod tests_docs;

pub use deliveries::Deliveries;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The node's metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections (the HPA metric).
    pub connections: IntGauge,
    /// Upgrades accepted.
    pub accepted: IntCounter,
    /// Upgrades refused, by reason.
    pub rejected: IntCounterVec,
    /// Connections closed as they were accepted (`limits.handshakesPerIp`).
    pub refused: IntCounter,
    /// Stored sessions of ended connections dropped: their user kept `sessions.keptPerUser`.
    pub sessions_dropped: IntCounter,
    /// Sends refused: their user started `limits.newRoomsPerHour` rooms or inboxes.
    pub new_rooms_refused: IntCounter,
    /// Connections closed, by reason.
    pub closed: IntCounterVec,
    /// Commands received.
    pub commands: IntCounter,
    /// Messages written to sockets.
    pub delivered: IntCounter,
    /// Messages or commands dropped, by reason.
    pub drops: IntCounterVec,
    /// Rooms with local subscribers.
    pub rooms: IntGauge,
    /// Most bytes ever queued for one (closed) connection.
    pub queue_high_water: IntGauge,
    /// Messages accepted from clients (acknowledged sends).
    pub received: IntCounter,
    /// Time from a send command to its acknowledgement (engine append + fan-out).
    pub publish_seconds: Histogram,
    /// Time from the append to the write on a socket, possibly on another pod.
    pub delivery_seconds: Histogram,
    /// Redis operations that failed or timed out.
    pub redis_errors: IntCounter,
    /// Reconnections of the Redis pub/sub connection.
    pub redis_reconnects: IntCounter,
    /// 1 while draining.
    pub draining: IntGauge,
    /// Connections still open during a drain.
    pub drain_remaining: IntGauge,
    /// Connections sent goaway by the drain.
    pub drain_evicted: IntCounter,
    /// Connections closed at the drain deadline (or on a forced exit).
    pub drain_forced: IntCounter,
    /// Connections shed by rebalancing.
    pub rebalance_shed: IntCounter,
    /// Open forwarded connections, by route name.
    pub forward_connections: prometheus::IntGaugeVec,
    /// Frames piped, by route and direction (`up`: client to upstream).
    pub forward_frames: IntCounterVec,
    /// Payload bytes piped, by route and direction.
    pub forward_bytes: IntCounterVec,
    /// Failed upstream dials (each attempt), by route.
    pub forward_dial_errors: IntCounterVec,
    /// Commands refused with `forbidden`, by action (join, send, dm, history, presence).
    pub permission_denied: IntCounterVec,
    /// Key file reloads, by outcome (`changed`, `failed`).
    pub key_reloads: IntCounterVec,
    /// Hook calls, by hook and outcome.
    pub hook_calls: IntCounterVec,
    /// Hook call latency, by hook.
    pub hook_seconds: prometheus::HistogramVec,
    /// Notifications dropped because the queue was full.
    pub hook_events_dropped: IntCounter,
    /// Server API requests, by endpoint and HTTP status.
    pub api_requests: IntCounterVec,
    /// Bytes of messages the memory engine holds (`memory.maxBytes`).
    pub memory_engine_bytes: IntGauge,
    /// The memory engine's budget in force (`memory.maxBytes`, or what it was resolved to).
    pub memory_engine_max_bytes: IntGauge,
    /// Messages the memory engine dropped to stay within `memory.maxBytes`, by kind.
    pub memory_engine_evicted: IntCounterVec,
}

/// Latency buckets, seconds: 100 µs .. 10 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric name");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric name");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric name");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric name");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let labelled = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let m = Metrics {
            registry: Registry::new(),
            connections: gauge(
                "chatgateway_connections",
                "Open WebSocket connections on this pod.",
            ),
            accepted: counter(
                "chatgateway_connections_accepted_total",
                "WebSocket upgrades accepted.",
            ),
            rejected: counter_vec(
                "chatgateway_upgrades_rejected_total",
                "Upgrade requests refused, by reason.",
                "reason",
            ),
            refused: counter(
                "chatgateway_connections_refused_total",
                "Connections closed as they were accepted: their IP held limits.handshakesPerIp connections that were not WebSockets yet.",
            ),
            sessions_dropped: counter(
                "chatgateway_sessions_dropped_total",
                "Stored sessions of ended connections dropped before their expiry: their user had sessions.keptPerUser newer ones on this pod.",
            ),
            new_rooms_refused: counter(
                "chatgateway_new_rooms_refused_total",
                "Sends to a room or inbox without messages refused: their user started limits.newRoomsPerHour rooms or inboxes in the last hour (on all pods together with the Redis engine).",
            ),
            closed: counter_vec(
                "chatgateway_connections_closed_total",
                "Connections closed, by reason.",
                "reason",
            ),
            commands: counter(
                "chatgateway_commands_received_total",
                "Commands received from clients.",
            ),
            delivered: counter(
                "chatgateway_messages_delivered_total",
                "Messages written to client sockets.",
            ),
            drops: counter_vec(
                "chatgateway_drops_total",
                "Messages or commands dropped, by reason.",
                "reason",
            ),
            rooms: gauge(
                "chatgateway_rooms",
                "Rooms with at least one local subscriber.",
            ),
            queue_high_water: gauge(
                "chatgateway_outbound_queue_high_water_bytes",
                "Most bytes ever queued for one connection (bounded by limits.outboundQueueBytes).",
            ),
            received: counter(
                "chatgateway_messages_received_total",
                "Messages accepted from clients (acknowledged sends).",
            ),
            publish_seconds: histogram(
                "chatgateway_publish_duration_seconds",
                "Time from a send command to its acknowledgement.",
            ),
            delivery_seconds: histogram(
                "chatgateway_delivery_latency_seconds",
                "Time from the append of a message to its write on a socket (across pods).",
            ),
            redis_errors: counter(
                "chatgateway_redis_errors_total",
                "Redis operations that failed or timed out.",
            ),
            redis_reconnects: counter(
                "chatgateway_redis_reconnects_total",
                "Reconnections of the Redis pub/sub connection.",
            ),
            draining: gauge("chatgateway_draining", "1 while this pod drains."),
            drain_remaining: gauge(
                "chatgateway_drain_remaining_connections",
                "Connections still open during a drain.",
            ),
            drain_evicted: counter(
                "chatgateway_drain_evicted_total",
                "Connections sent goaway by the drain.",
            ),
            drain_forced: counter(
                "chatgateway_drain_forced_closes_total",
                "Connections never told to go, closed at the drain deadline or on a forced exit.",
            ),
            rebalance_shed: counter(
                "chatgateway_rebalance_shed_total",
                "Connections shed by rebalancing.",
            ),
            forward_connections: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "chatgateway_forward_connections",
                        "Open forwarded connections, by route.",
                    ),
                    &["route"],
                )
                .expect("valid metric name");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            forward_frames: labelled(
                "chatgateway_forward_frames_total",
                "Frames piped through forwarding routes, by route and direction.",
                &["route", "direction"],
            ),
            forward_bytes: labelled(
                "chatgateway_forward_bytes_total",
                "Payload bytes piped through forwarding routes, by route and direction.",
                &["route", "direction"],
            ),
            forward_dial_errors: counter_vec(
                "chatgateway_forward_dial_errors_total",
                "Failed upstream dial attempts, by route.",
                "route",
            ),
            permission_denied: counter_vec(
                "chatgateway_permission_denied_total",
                "Commands refused with forbidden, by action.",
                "action",
            ),
            key_reloads: counter_vec(
                "chatgateway_key_reloads_total",
                "Reloads of the JWT key files, by outcome (changed, failed).",
                "outcome",
            ),
            hook_calls: labelled(
                "chatgateway_hook_calls_total",
                "Backend hook calls, by hook and outcome (allowed, denied, timeout, unavailable, bad_answer, circuit_open, busy).",
                &["hook", "outcome"],
            ),
            hook_seconds: {
                let h = prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "chatgateway_hook_seconds",
                        "Backend hook call latency, by hook.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["hook"],
                )
                .expect("valid metric name");
                registry.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            hook_events_dropped: counter(
                "chatgateway_hook_events_dropped_total",
                "Backend notifications dropped because their queue was full, or the backend refused one alone as too large (413).",
            ),
            api_requests: labelled(
                "chatgateway_api_requests_total",
                "Server API requests, by endpoint and HTTP status.",
                &["endpoint", "status"],
            ),
            memory_engine_bytes: gauge(
                "chatgateway_memory_engine_bytes",
                "Bytes of messages (history and inboxes) and of remembered msg ids the memory engine holds, frames and bookkeeping; at most memory.maxBytes.",
            ),
            memory_engine_max_bytes: gauge(
                "chatgateway_memory_engine_max_bytes",
                "The memory engine's budget: memory.maxBytes, or half the container's memory limit when unset.",
            ),
            memory_engine_evicted: counter_vec(
                "chatgateway_memory_engine_evicted_total",
                "Messages the memory engine dropped before their retention, and msg ids before their dedup window, to stay within memory.maxBytes, by kind (room, inbox, msg_id).",
                "kind",
            ),
        };
        Metrics { registry, ..m }
    }

    /// The memory engine's counters (`memory.maxBytes`).
    pub fn memory_engine(&self) -> crate::engine::memory::BudgetCounters {
        let evicted = |kind: &str| self.memory_engine_evicted.with_label_values(&[kind]);
        crate::engine::memory::BudgetCounters {
            held: self.memory_engine_bytes.clone(),
            max: self.memory_engine_max_bytes.clone(),
            evicted_rooms: evicted("room"),
            evicted_inboxes: evicted("inbox"),
            evicted_ids: evicted("msg_id"),
        }
    }

    /// The delivery counter and latency histogram, for the hub's fan-outs and the writers.
    pub fn deliveries(&self) -> Deliveries {
        Deliveries::new(self.delivered.clone(), self.delivery_seconds.clone())
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding metrics failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
