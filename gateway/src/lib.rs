//! chatgateway: a WebSocket chat gateway (rooms, direct messages, history, presence,
//! resume) with an in-memory engine for one node and a Redis engine for a cluster.

// The module docs link to the private parts they are built from: read them with
// `make doc` (`--document-private-items`), where those links resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub mod api;
pub mod assets;
pub mod auth;
pub mod client_ip;
pub mod closing;
pub mod connection;
pub mod control;
pub mod disconnect;
pub mod drain;
pub mod ended_sessions;
pub mod engine;
pub mod forward;
pub mod heartbeat;
pub mod hooks;
pub mod httpio;
pub mod hub;
pub mod inbound;
pub mod linger;
pub mod log_gate;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod permissions;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod rebalance;
pub mod rejection;
pub mod room_starts;
pub mod server;
pub mod upgrade;

#[cfg(test)]
mod doc_tables;

pub use chat_gateway_config as config;
pub use chat_gateway_telemetry as telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How often a node publishes its load in the node registry.
const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Publishes this node's connection count and drain state until shutdown.
async fn report_load(node: Arc<node::Node>) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let report = engine::NodeReport {
            id: node.id.clone(),
            connections: node.connection_count() as u64,
            draining: node.is_draining(),
            heartbeat: engine::now_ms(),
        };
        if let Err(e) = node.engine.report_node(&report).await {
            tracing::debug!(error = %e, "node report failed");
        }
    }
}

/// A running gateway: its node, bound address and serving task.
pub struct Gateway {
    /// Shared node state (inspectable by in-process tests).
    pub node: Arc<node::Node>,
    /// Address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// Address of the server API, when configured.
    pub api_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Binds `config.server.listen` and starts serving.
    pub async fn start(config: config::Config) -> anyhow::Result<Gateway> {
        let shutdown = CancellationToken::new();
        let listener = server::bind(config.server.listen, config.server.listen_backlog)
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.server.listen))?;
        let addr = listener.local_addr()?;
        // The server API: its own port and keys, or nothing.
        let api = match config.api.listen {
            Some(listen) => {
                let keys = api::keys::ApiKeys::new(&config.api)
                    .map_err(|e| anyhow::anyhow!("api keys: {e}"))?;
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("binding api.listen {listen}: {e}"))?;
                Some((l, Arc::new(keys)))
            }
            None => None,
        };
        let node = node::Node::new(config, shutdown)?;
        let mut api_addr = None;
        if let Some((listener, keys)) = api {
            api_addr = Some(listener.local_addr()?);
            tokio::spawn(api::run(node.clone(), listener, keys));
        }
        let task = tokio::spawn(server::run(node.clone(), listener));
        tokio::spawn(report_load(node.clone()));
        tokio::spawn(rebalance::run(node.clone()));
        tokio::spawn(node::reload_keys(node.clone()));
        tokio::spawn(control::run(node.clone()));
        tokio::spawn(heartbeat::run(node.clone()));
        let notifier = node.clone();
        tokio::spawn(async move {
            if let Some(events) = &notifier.hooks.events {
                events.run(notifier.shutdown.clone()).await;
            }
        });
        Ok(Gateway {
            node,
            addr,
            api_addr,
            task,
        })
    }

    /// Drains (see [`drain`]): readiness off, accept grace, goaway at the evict rate, until
    /// no connection is left or the drain timeout. Cancel `force` to cut it short.
    pub async fn drain(&self, force: &CancellationToken) -> drain::DrainOutcome {
        let outcome = drain::drain(&self.node, force).await;
        // The registry should show the drain until the node disappears.
        let report = engine::NodeReport {
            id: self.node.id.clone(),
            connections: self.node.connection_count() as u64,
            draining: true,
            heartbeat: engine::now_ms(),
        };
        let _ = self.node.engine.report_node(&report).await;
        outcome
    }

    /// Stops accepting, closes every connection (1001) and waits until they are gone or
    /// `deadline` passes.
    pub async fn shutdown(self, deadline: std::time::Duration) {
        self.node.shutdown.cancel();
        let _ = self.task.await;
        let until = tokio::time::Instant::now() + deadline;
        while self.node.connection_count() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The flushes get a deadline of their own, side by side: after a wait that used up
        // the first, they were cut off at once, and the connections closed last (a forced
        // drain's) lost their disconnect events and presence leaves.
        // The last disconnects and messages reach the backend if it answers in time, and
        // the presence of the connections just closed does not linger past the process.
        let events = async {
            if let Some(events) = &self.node.hooks.events {
                events.flush().await;
            }
        };
        let flushes = futures_util::future::join(events, self.node.linger.flush());
        let _ = tokio::time::timeout(deadline, flushes).await;
        // Presence changes waiting for their window are flushed, not dropped: whoever is
        // still connected hears of them (other nodes batch these leaves themselves).
        self.node.hub.flush_presence();
    }
}
