//! Heartbeat: one task per node pings every chat connection once per
//! `heartbeat.interval` and closes those it has not heard from for more than two
//! intervals (close 1001, `heartbeat timeout`).
//!
//! One task rather than a timer per connection: each connection's writer used to hold a
//! ping timer, which every idle connection carried (about 180 bytes and an entry in the
//! runtime's timer wheel) and which woke it once an interval. The interval is cut into
//! [`SLICES`] ticks, each visiting one slice of the connections (by id), so a node's
//! pings are spread over the interval instead of leaving in one burst.

use crate::disconnect::{CloseReason, HEARTBEAT_TIMEOUT, SLOW_CONSUMER};
use crate::node::Node;
use std::sync::Arc;
use std::time::Duration;

/// Ticks per interval; each visits one slice of the connections.
pub const SLICES: u64 = 16;

/// What the heartbeat does to a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    Ping,
    Close(CloseReason),
}

/// The beat of a connection last heard from at `heard`, at `now` (both in ms on the
/// node's clock), with `backlog` bytes of frames still queued for it: closed once silent
/// for more than two intervals. Checked once an interval, a silent client goes between
/// two and three intervals after its last frame.
///
/// A silent client with frames still waiting for it is closed as a slow consumer, not
/// for its silence: our pings queue behind those frames, so a client reading slowly has
/// not yet received the ping it would answer.
pub fn beat(now: u64, heard: u64, interval: Duration, backlog: usize) -> Beat {
    if now.saturating_sub(heard) <= 2 * interval.as_millis() as u64 {
        Beat::Ping
    } else if backlog > 0 {
        Beat::Close(SLOW_CONSUMER)
    } else {
        Beat::Close(HEARTBEAT_TIMEOUT)
    }
}

/// Runs the node's heartbeat until shutdown.
pub async fn run(node: Arc<Node>) {
    let interval = node.config.heartbeat.interval;
    let tick = interval / SLICES as u32;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for slice in (0..SLICES).cycle() {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = node.clock_ms();
        node.each_chat_queue(slice, SLICES, |queue| {
            match beat(now, queue.heard_at(), interval, queue.queued_bytes()) {
                // A queue too full for a ping is being written to: no ping needed.
                Beat::Ping => _ = queue.ping(),
                Beat::Close(reason) => queue.close(reason),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{self, Outbound, OutboundQueue};

    #[test]
    fn silent_for_more_than_two_intervals_closes() {
        let i = Duration::from_millis(100);
        assert_eq!(beat(1_000, 1_000, i, 0), Beat::Ping);
        assert_eq!(
            beat(1_200, 1_000, i, 0),
            Beat::Ping,
            "two intervals exactly"
        );
        assert_eq!(beat(1_201, 1_000, i, 0), Beat::Close(HEARTBEAT_TIMEOUT));
        assert_eq!(
            beat(900, 1_000, i, 0),
            Beat::Ping,
            "heard after `now` was read"
        );
    }

    #[test]
    fn silent_behind_a_backlog_is_a_slow_consumer() {
        let i = Duration::from_millis(100);
        assert_eq!(beat(1_200, 1_000, i, 4096), Beat::Ping);
        assert_eq!(beat(1_201, 1_000, i, 1), Beat::Close(SLOW_CONSUMER));
    }

    /// A chat connection registered on `node` as the socket loop does, heard from now.
    fn connect(node: &Arc<Node>) -> (OutboundQueue, outbound::OutboundReceiver) {
        let (queue, rx) = outbound::queue(8, 1024);
        queue.heard(node.clock_ms());
        let ctl = crate::control::ConnCtl::new(crate::connection::session::Hex::random());
        node.register(queue.clone(), "u", Some(Arc::new(ctl)));
        (queue, rx)
    }

    fn pings(rx: &mut outbound::OutboundReceiver) -> usize {
        std::iter::from_fn(|| rx.try_recv_for_test())
            .filter(|item| matches!(item, Outbound::Ping))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn every_chat_connection_is_pinged_once_an_interval_and_the_silent_ones_close() {
        let mut config = crate::config::Config::default();
        config.auth.mode = crate::config::AuthMode::Insecure;
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.heartbeat.interval = Duration::from_secs(10);
        let node = Node::new(config, Default::default()).expect("node");
        let (talks, mut talks_rx) = connect(&node);
        let (silent, mut silent_rx) = connect(&node);
        let (behind, _behind_rx) = connect(&node);
        assert!(behind.frame("{}"), "a frame it never reads");
        let forwarded = OutboundQueue::opaque();
        node.register(forwarded.clone(), "f", None);
        tokio::spawn(run(node.clone()));

        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            talks.heard(node.clock_ms());
            assert_eq!(pings(&mut talks_rx), 1, "one ping an interval");
        }
        assert_eq!(
            pings(&mut silent_rx),
            2,
            "pinged until silent for two intervals"
        );
        assert_eq!(silent.close_reason(), Some(HEARTBEAT_TIMEOUT));
        assert_eq!(
            behind.close_reason(),
            Some(SLOW_CONSUMER),
            "pings wait behind"
        );
        assert_eq!(talks.close_reason(), None);
        assert_eq!(
            forwarded.close_reason(),
            None,
            "a forwarded socket is not ours to ping"
        );
        node.shutdown.cancel();
    }
}
