//! Rebalancing: long-lived sockets do not move when pods are added, so a pod well above
//! the cluster mean sheds connections slowly through the drain's goaway/resume path.

use crate::drain::evict_one;
use crate::node::Node;
use std::sync::Arc;

/// How many connections a node should shed now, given every node's count (its own
/// included, fresh) — 0 unless it is above the mean by both thresholds. Never sheds
/// below the mean.
pub fn excess(mine: u64, all: &[u64], abs_threshold: u64, rel_threshold: f64) -> u64 {
    if all.len() < 2 {
        return 0;
    }
    let mean = all.iter().sum::<u64>() as f64 / all.len() as f64;
    let over = mine as f64 - mean;
    if over > abs_threshold as f64 && mine as f64 > mean * (1.0 + rel_threshold) {
        over.floor() as u64
    } else {
        0
    }
}

/// Compares this node with the cluster every `rebalance.interval` and sheds at
/// `rebalance.rate`; does nothing while any node drains or when turned off.
pub async fn run(node: Arc<Node>) {
    let cfg = node.config.rebalance.clone();
    if !cfg.enabled {
        return;
    }
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if node.is_draining() {
            return;
        }
        let nodes = match node.engine.nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "rebalance: node registry unavailable");
                continue;
            }
        };
        if nodes.iter().any(|n| n.draining) {
            continue; // a drain moves connections already; do not add to the churn
        }
        let mine = node.connection_count() as u64;
        let mut counts: Vec<u64> = nodes
            .iter()
            .filter(|n| n.id != node.id)
            .map(|n| n.connections)
            .collect();
        counts.push(mine);
        let shed = excess(mine, &counts, cfg.abs_threshold, cfg.rel_threshold);
        if shed == 0 {
            continue;
        }
        // At most what fits into one interval at the configured rate.
        let budget = shed.min((cfg.rate * cfg.interval.as_secs_f64()).ceil() as u64);
        tracing::info!(
            mine,
            nodes = counts.len(),
            shed = budget,
            "rebalance: shedding connections"
        );
        let gap = crate::ratelimit::gap_at(cfg.rate);
        let floor = mine - shed; // the mean: never go below it
        for _ in 0..budget {
            if node.is_draining() || (node.connection_count() as u64) <= floor {
                break;
            }
            if evict_one(&node, crate::disconnect::REBALANCE) {
                node.metrics.rebalance_shed.inc();
            }
            tokio::select! {
                _ = node.shutdown.cancelled() => return,
                _ = tokio::time::sleep(gap) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::excess;

    #[test]
    fn sheds_only_above_both_thresholds_and_never_below_the_mean() {
        // mean 100: 300 is 200 above (abs 50, rel 20 %) -> shed down to the mean.
        assert_eq!(excess(300, &[300, 0, 0], 50, 0.2), 200);
        // 30 above the mean: under the absolute threshold.
        assert_eq!(excess(130, &[130, 100, 70], 50, 0.2), 0);
        // 1000 vs mean 950: 50 above but only 5 %: under the relative threshold.
        assert_eq!(excess(1000, &[1000, 900, 950], 10, 0.2), 0);
        // Alone: nothing to balance with.
        assert_eq!(excess(500, &[500], 0, 0.0), 0);
    }
}
