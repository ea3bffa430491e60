//! Hub: this node's rooms and their local subscribers.
//!
//! The engine hands every message for a room to the hub once; the hub queues the same
//! serialised bytes (an `Arc`) to each local subscriber, so fan-out costs one atomic
//! increment per recipient, not one serialisation.

use crate::engine::Envelope;
use crate::outbound::{Outbound, OutboundQueue};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Locally unique id of a connection.
pub type ConnId = u64;

const SHARDS: usize = 16;

type Room = HashMap<ConnId, OutboundQueue>;

/// Local room -> subscriber map, sharded by room to keep lock hold times short.
pub struct Hub {
    shards: Vec<Mutex<HashMap<Arc<str>, Room>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }
}

impl Hub {
    fn shard(&self, room: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Room>> {
        let shard = &self.shards[(self.hasher.hash_one(room) as usize) % SHARDS];
        // A poisoned shard only means a panic elsewhere mid-update of plain maps; the data
        // is still consistent enough to keep serving.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a subscriber; true when it is the room's first local subscriber.
    pub fn subscribe(&self, room: &Arc<str>, conn: ConnId, queue: OutboundQueue) -> bool {
        let mut shard = self.shard(room);
        let subs = shard.entry(room.clone()).or_default();
        let first = subs.is_empty();
        subs.insert(conn, queue);
        first
    }

    /// Removes a subscriber; true when the room has no local subscriber left.
    pub fn unsubscribe(&self, room: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(room);
        let Some(subs) = shard.get_mut(room) else {
            return false;
        };
        if subs.remove(&conn).is_none() {
            return false;
        }
        if subs.is_empty() {
            shard.remove(room);
            return true;
        }
        false
    }

    /// Queues a room message to every local subscriber; returns how many took it.
    pub fn deliver(&self, env: &Arc<Envelope>) -> usize {
        let span = match &env.traceparent {
            Some(tp) if crate::telemetry::enabled() => {
                let span = tracing::info_span!("deliver", room = %env.room, seq = env.seq, recipients = tracing::field::Empty, trace_id = tracing::field::Empty);
                crate::telemetry::set_parent(&span, tp);
                crate::telemetry::record_trace_id(&span);
                span
            }
            _ => tracing::Span::none(),
        };
        let _entered = span.enter();
        let shard = self.shard(&env.room);
        let Some(subs) = shard.get(&env.room) else {
            return 0;
        };
        let n = subs
            .values()
            .filter(|q| q.push(Outbound::Msg(env.clone())))
            .count();
        span.record("recipients", n);
        n
    }

    /// Queues a ready frame (presence) to every local subscriber of a room.
    pub fn broadcast(&self, room: &str, frame: &Utf8Bytes) -> usize {
        let shard = self.shard(room);
        let Some(subs) = shard.get(room) else {
            return 0;
        };
        subs.values()
            .filter(|q| q.push(Outbound::Frame(frame.clone())))
            .count()
    }

    /// Whether a room has local subscribers.
    pub fn has_subscribers(&self, room: &str) -> bool {
        self.shard(room).get(room).is_some_and(|s| !s.is_empty())
    }

    /// Number of rooms with local subscribers.
    pub fn room_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::queue;

    #[test]
    fn first_and_last_subscriber_are_reported() {
        let hub = Hub::default();
        let room: Arc<str> = "r".into();
        let (q1, _r1) = queue(8, 1024);
        let (q2, _r2) = queue(8, 1024);
        assert!(hub.subscribe(&room, 1, q1));
        assert!(!hub.subscribe(&room, 2, q2));
        assert!(!hub.unsubscribe("r", 1));
        assert!(!hub.unsubscribe("r", 1), "second unsubscribe is a no-op");
        assert!(hub.unsubscribe("r", 2));
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn deliver_shares_one_frame_and_skips_closed_subscribers() {
        let hub = Hub::default();
        let room: Arc<str> = "r".into();
        let (q1, mut r1) = queue(8, 1024);
        let (q2, _r2) = queue(8, 1024);
        hub.subscribe(&room, 1, q1);
        hub.subscribe(&room, 2, q2.clone());
        q2.close(crate::disconnect::SLOW_CONSUMER);
        let env = Arc::new(Envelope {
            room: room.clone(),
            seq: 1,
            epoch: "e".into(),
            ts: 0,
            traceparent: None,
            frame: "{}".into(),
        });
        assert_eq!(hub.deliver(&env), 1);
        drop(hub);
        let got = r1.try_recv_for_test().expect("queued");
        match got {
            Outbound::Msg(e) => assert!(Arc::ptr_eq(&e, &env)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
