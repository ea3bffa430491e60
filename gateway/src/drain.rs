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
    let mut tick = tokio::time::interval(crate::ratelimit::gap_at(rate));
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
    if node.connection_count() > 0 {
        // Counted: the ones never told to go. Those told and still finishing their close
        // (the close frame, the session save) were counted as forced too, and made the
        // forced-close alert fire for a drain that only just ran over.
        out.forced = node.close_all(disconnect::DRAIN_TIMEOUT);
        node.metrics.drain_forced.inc_by(out.forced);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{self, Outbound};

    /// Stand-ins for connections: each waits for its `goaway` and close (as the writer
    /// would write them), then leaves the node, as a reconnecting client does.
    fn connections(node: &Arc<Node>, n: usize) -> Vec<tokio::task::JoinHandle<(String, u16)>> {
        (0..n)
            .map(|_| {
                let (queue, mut rx) = outbound::queue(16, 1 << 16);
                let id = node.register(queue, "u", None);
                let node = node.clone();
                tokio::spawn(async move {
                    let mut goaway = String::new();
                    loop {
                        match rx.try_recv_for_test() {
                            Some(Outbound::Frame(f)) => goaway = f.to_string(),
                            Some(Outbound::Close(reason)) => {
                                node.unregister(id);
                                return (goaway, reason.code);
                            }
                            Some(_) => {}
                            None => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    }
                })
            })
            .collect()
    }

    #[tokio::test]
    async fn every_connection_is_told_to_go_and_the_drain_ends_when_none_is_left() {
        let mut config = crate::config::Config::default();
        config.auth.mode = crate::config::AuthMode::Insecure;
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.drain.accept_grace = Duration::ZERO;
        config.drain.evict_rate = 1000.0;
        config.drain.reconnect_jitter = Duration::from_millis(100);
        let node = Node::new(config, CancellationToken::new()).expect("node");
        let conns = connections(&node, 5);
        let outcome = drain(&node, &CancellationToken::new()).await;
        assert_eq!(
            outcome,
            DrainOutcome {
                evicted: 5,
                forced: 0
            }
        );
        assert!(node.is_draining() && !node.accepting());
        for c in conns {
            let (goaway, code) = c.await.expect("connection");
            let f: serde_json::Value = serde_json::from_str(&goaway).expect("goaway json");
            assert_eq!(
                (f["type"].as_str(), f["reason"].as_str()),
                (Some("goaway"), Some("draining"))
            );
            assert!(
                f["reconnect_after_ms"].as_u64().is_some_and(|ms| ms <= 100),
                "{f}"
            );
            assert_eq!(code, 1012);
        }
        assert_eq!(node.metrics.drain_evicted.get(), 5);
    }

    #[tokio::test]
    async fn connections_left_at_the_deadline_are_closed_and_counted() {
        let mut config = crate::config::Config::default();
        config.auth.mode = crate::config::AuthMode::Insecure;
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.drain.accept_grace = Duration::ZERO;
        config.drain.evict_rate = 1.0; // 1 per second: not all are told by the deadline
        config.drain.timeout = Duration::from_millis(1500);
        let node = Node::new(config, CancellationToken::new()).expect("node");
        // Connections that never leave.
        let queues: Vec<_> = (0..4)
            .map(|_| {
                let (q, rx) = outbound::queue(16, 1 << 16);
                node.register(q.clone(), "u", None);
                (q, rx)
            })
            .collect();
        let outcome = drain(&node, &CancellationToken::new()).await;
        // Told or not, none left: all four are closed at the deadline; only the ones never
        // told count as forced (a told one still finishing its close is no forced close).
        assert!((1..4).contains(&outcome.evicted), "{outcome:?}");
        assert_eq!(outcome.forced, 4 - outcome.evicted, "{outcome:?}");
        assert_eq!(node.metrics.drain_forced.get(), outcome.forced);
        let timed_out = queues
            .iter()
            .filter(|(q, _)| q.close_reason() == Some(disconnect::DRAIN_TIMEOUT))
            .count();
        assert_eq!(timed_out, 4);
    }

    /// A connection that registers once the node closed them all (its connect hook
    /// answered after the drain ended) is closed at once with the same reason: before,
    /// it got its welcome and was dropped without a close frame when the process exited.
    #[tokio::test]
    async fn a_connection_registered_after_close_all_is_closed_too() {
        let mut config = crate::config::Config::default();
        config.auth.mode = crate::config::AuthMode::Insecure;
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        let node = Node::new(config, CancellationToken::new()).expect("node");
        let (early, _rx) = outbound::queue(16, 1 << 16);
        node.register(early.clone(), "u", None);
        node.close_all(disconnect::SHUTTING_DOWN);
        let (late, _rx) = outbound::queue(16, 1 << 16);
        node.register(late.clone(), "v", None);
        for q in [early, late] {
            assert_eq!(q.close_reason(), Some(disconnect::SHUTTING_DOWN));
        }
    }
}
