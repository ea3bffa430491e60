//! Prometheus metrics of a gateway node.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The node's metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections (the HPA metric).
    pub connections: IntGauge,
    /// Upgrades accepted.
    pub accepted: IntCounter,
    /// Upgrades refused, by reason.
    pub rejected: IntCounterVec,
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
}

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
        };
        Metrics { registry, ..m }
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
