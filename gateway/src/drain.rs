//! Graceful drain (SIGTERM) and the shared eviction path used by rebalancing.
//!
//! Order: readiness fails at once -> upgrades still accepted for `drain.acceptGrace`
//! (endpoints take time to update) -> connections get `goaway` and close 1012 at a
//! bounded rate, each keeping its resume token valid on any pod -> exit when none is
//! left, or at `drain.timeout` after closing the rest.

use crate::disconnect::{self, CloseReason};
use crate::node::Node;
use crate::protocol::push::goaway_frame;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Connections sent `goaway`.
    pub evicted: u64,
    /// Connections still open at the deadline (or at a forced exit), closed at once.
    pub forced: u64,
}

/// Tells one connection to go: `goaway` with a jittered reconnect hint, then the close
/// `reason` (1012: [`DRAINING`](disconnect::DRAINING) or
/// [`REBALANCE`](disconnect::REBALANCE)). Returns false when no connection was left to tell.
pub fn evict_one(node: &Node, reason: CloseReason) -> bool {
    let Some(queue) = node.pick_connection() else {
        return false;
    };
    let jitter = node.config.drain.reconnect_jitter.as_millis() as u64;
    let after = if jitter == 0 {
        0
    } else {
        rand::random::<u64>() % (jitter + 1)
    };
    queue.goaway(goaway_frame(reason.reason, after), reason)
}

/// Runs a drain to the end. Cancelling `force` (a second signal) skips the rest and
/// closes everything at once.
pub async fn drain(node: &Arc<Node>, force: &CancellationToken) -> DrainOutcome {
    let cfg = node.config.drain.clone();
    let started = Instant::now();
    let deadline = started + cfg.timeout;
    node.draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    node.metrics.draining.set(1);
    tracing::info!(
        connections = node.connection_count(),
        "drain started: readiness off"
    );

    tokio::select! {
        _ = tokio::time::sleep(cfg.accept_grace) => {}
        _ = force.cancelled() => {}
        _ = tokio::time::sleep_until(deadline) => {}
    }
    node.accepting
        .store(false, std::sync::atomic::Ordering::Relaxed);

    let open = node.connection_count();
    let mut rate = cfg.evict_rate;
    if !cfg.period.is_zero() {
        rate = rate.max(open as f64 / cfg.period.as_secs_f64());
    }
    tracing::info!(connections = open, rate, "accept grace over: evicting");
    let mut out = DrainOutcome::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        node.metrics
            .drain_remaining
            .set(node.connection_count() as i64);
        if node.connection_count() == 0 || force.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = force.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
        }
        if evict_one(node, disconnect::DRAINING) {
            out.evicted += 1;
            node.metrics.drain_evicted.inc();
        } else {
            // Everyone was told; wait for the last ones to reconnect elsewhere.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = force.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let remaining = node.connection_count() as u64;
    if remaining > 0 {
        out.forced = remaining;
        node.metrics.drain_forced.inc_by(remaining);
        node.close_all(disconnect::DRAIN_TIMEOUT);
        let until = Instant::now() + Duration::from_secs(2);
        while node.connection_count() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    node.metrics
        .drain_remaining
        .set(node.connection_count() as i64);
    tracing::info!(evicted = out.evicted, forced = out.forced, took = ?started.elapsed(), "drain finished");
    out
}
