//! chatgateway: a WebSocket chat gateway (rooms, direct messages, history, presence,
//! resume) with an in-memory engine for one node and a Redis engine for a cluster.

pub mod auth;
pub mod config;
pub mod connection;
pub mod engine;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod protocol;
pub mod ratelimit;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A running gateway: its node, bound address and serving task.
pub struct Gateway {
    /// Shared node state (inspectable by in-process tests).
    pub node: Arc<node::Node>,
    /// Address actually bound (useful with port 0).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Binds `config.server.listen` and starts serving.
    pub async fn start(config: config::Config) -> anyhow::Result<Gateway> {
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.server.listen))?;
        let addr = listener.local_addr()?;
        let node = node::Node::new(config, shutdown)?;
        let task = tokio::spawn(server::run(node.clone(), listener));
        Ok(Gateway { node, addr, task })
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
    }
}
