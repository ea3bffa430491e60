//! Hub: this node's rooms and their local subscribers.
//!
//! The engine hands every message for a room to the hub once; the hub queues the same
//! serialised bytes (an `Arc`) to each local subscriber, so fan-out costs one atomic
//! increment per recipient, not one serialisation.
//!
//! Presence changes are batched per room for `limits.presenceBatch` (see
//! [`crate::presence`]): the engines report each change here, on every node alike, and
//! one task per node pushes each room's batch as one frame when its window ends.

mod members;

use crate::engine::Envelope;
use crate::outbound::{Outbound, OutboundQueue};
use crate::presence::Batch;
use crate::protocol::push::PresencePush;
use members::Members;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Locally unique id of a connection.
pub type ConnId = u64;

const SHARDS: usize = 16;

/// A room's local members, and what decides how its messages reach them.
///
/// A fan-out writes straight to each member's socket (the fast path: one syscall per
/// delivery, no task woken) while the room's messages come far enough apart. When they
/// come so fast that such fan-outs would keep the delivering task busy most of the time
/// (each message waiting for the one before), they go through the members' writers
/// instead, which batch what piles up: several frames per syscall. The room keeps the
/// time its last direct fan-out took, and a message goes direct if it comes at least
/// that long and a quarter after the previous one.
///
/// Every local user's inbox is a room here, so a room is kept small: 48 bytes, 64 with
/// its name in the shard's table (104 with the cost as a `Duration` and the members' map
/// inline), which an idle connection pays about one and a half times over.
#[derive(Default)]
struct Room {
    subs: Members,
    /// When the last fan-out started.
    last_start: Option<Instant>,
    /// How long the last direct fan-out took, in ns (at most ~4.3 s).
    direct_ns: u32,
}

impl Room {
    /// Whether a message arriving `now` fans out direct.
    fn direct(&self, now: Instant) -> bool {
        let cost = Duration::from_nanos(u64::from(self.direct_ns));
        self.last_start
            .is_none_or(|last| now.saturating_duration_since(last) >= cost * 5 / 4)
    }

    /// Notes how long the last direct fan-out took.
    fn set_cost(&mut self, cost: Duration) {
        self.direct_ns = u32::try_from(cost.as_nanos()).unwrap_or(u32::MAX);
    }
}

/// Local room -> subscriber map, sharded by room to keep lock hold times short.
pub struct Hub {
    shards: Vec<Mutex<HashMap<Arc<str>, Room>>>,
    hasher: std::collections::hash_map::RandomState,
    /// How long presence changes are collected (0: each is pushed at once).
    presence_window: Duration,
    /// Rooms with presence changes waiting for the end of the window.
    pending: Mutex<HashMap<Arc<str>, Batch>>,
    /// Tells the flush task that a window started.
    wake: Notify,
    started: OnceLock<()>,
}

impl Default for Hub {
    /// A hub pushing each presence change at once (tests, tools).
    fn default() -> Self {
        Hub::new(Duration::ZERO)
    }
}

impl Hub {
    /// A hub batching presence changes for `presence_window` (`limits.presenceBatch`).
    pub fn new(presence_window: Duration) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            presence_window,
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            started: OnceLock::new(),
        }
    }

    fn shard(&self, room: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Room>> {
        let shard = &self.shards[(self.hasher.hash_one(room) as usize) % SHARDS];
        // A poisoned shard only means a panic elsewhere mid-update of plain maps; the data
        // is still consistent enough to keep serving.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets what the last direct fan-out of `room` took (tests).
    #[cfg(test)]
    pub(crate) fn set_direct_cost(&self, room: &str, cost: Duration) {
        if let Some(room) = self.shard(room).get_mut(room) {
            room.set_cost(cost);
        }
    }

    /// Adds a subscriber; true when it is the room's first local subscriber.
    pub fn subscribe(&self, room: &Arc<str>, conn: ConnId, queue: OutboundQueue) -> bool {
        let mut shard = self.shard(room);
        let subs = &mut shard.entry(room.clone()).or_default().subs;
        let first = subs.is_empty();
        subs.insert(conn, queue);
        first
    }

    /// Removes a subscriber; true when the room has no local subscriber left.
    pub fn unsubscribe(&self, room: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(room);
        let Some(subs) = shard.get_mut(room).map(|r| &mut r.subs) else {
            return false;
        };
        if !subs.remove(conn) {
            return false;
        }
        if subs.is_empty() {
            shard.remove(room);
            return true;
        }
        false
    }

    /// Delivers a room message to every local subscriber, straight to its socket or
    /// through its queue (see [`Room`]); returns how many took it.
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
        // The members are taken under the shard's lock and served after it: a member's
        // push may write to its socket (the fast path), and a shard's lock held for a
        // whole room's syscalls would stall every room of the shard on every thread.
        // Order within a room does not rest on this lock: each engine delivers a room's
        // messages one at a time (the memory engine under the room's lock, Redis from its
        // one delivery task).
        let start = Instant::now();
        let (targets, direct) = {
            let mut shard = self.shard(&env.room);
            let Some(room) = shard.get_mut(&env.room) else {
                return 0;
            };
            let direct = room.direct(start);
            room.last_start = Some(start);
            let targets: Vec<_> = room.subs.queues().map(OutboundQueue::pusher).collect();
            (targets, direct)
        };
        let n = targets.iter().filter(|q| q.deliver(env, direct)).count();
        if direct {
            if let Some(room) = self.shard(&env.room).get_mut(&env.room) {
                room.set_cost(start.elapsed());
            }
        }
        span.record("recipients", n);
        n
    }

    /// Queues a ready frame to every local subscriber of a room.
    fn broadcast(&self, room: &str, frame: &Utf8Bytes) -> usize {
        let shard = self.shard(room);
        let Some(room) = shard.get(room) else {
            return 0;
        };
        room.subs
            .queues()
            .filter(|q| q.push(Outbound::Frame(frame.clone())))
            .count()
    }

    /// A user's first connection joined (`true`) or last one left `room`: the local
    /// members hear of it in the room's next `presence` frame, at the end of the window
    /// or sooner when the batch is full.
    pub fn presence(self: &Arc<Self>, room: &str, user: &str, joined: bool) {
        if self.presence_window.is_zero() {
            let frame = PresencePush::change(room, user, joined).frame();
            self.broadcast(room, &frame.into());
            return;
        }
        if !self.has_subscribers(room) {
            return; // nobody here to tell
        }
        let mut pending = self.lock_pending();
        let first = pending.is_empty();
        let full = match pending.get_mut(room) {
            Some(batch) => batch.add(user, joined),
            None => {
                let mut batch = Batch::default();
                let full = batch.add(user, joined);
                pending.insert(room.into(), batch);
                full
            }
        };
        if full {
            if let Some(batch) = pending.remove(room) {
                self.push_batch(room, batch);
            }
        }
        drop(pending);
        if first {
            self.started.get_or_init(|| {
                tokio::spawn(run_presence_flush(Arc::downgrade(self)));
            });
            self.wake.notify_one();
        }
    }

    /// Pushes every waiting presence batch now (the end of a window, and shutdown: the
    /// changes are flushed to whoever is still connected, never dropped).
    pub fn flush_presence(&self) {
        let mut pending = self.lock_pending();
        for (room, batch) in pending.drain() {
            self.push_batch(&room, batch);
        }
    }

    /// Pushes one room's batch. Callers hold the pending lock, so a room's frames leave in
    /// the order of their windows even when a full batch and a window end race.
    fn push_batch(&self, room: &str, batch: Batch) {
        let changes = batch.into_changes();
        let frame = PresencePush::new(room, changes.joined, changes.left).frame();
        self.broadcast(room, &frame.into());
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Batch>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn has_pending(&self) -> bool {
        !self.lock_pending().is_empty()
    }

    /// Whether a room has local subscribers.
    pub fn has_subscribers(&self, room: &str) -> bool {
        self.shard(room)
            .get(room)
            .is_some_and(|r| !r.subs.is_empty())
    }

    /// Number of rooms with local subscribers.
    pub fn room_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// Flushes presence batches a window after the first change of each, until the hub is
/// gone. It holds the hub weakly (only while waiting, each wait bounded), like the linger.
async fn run_presence_flush(hub: Weak<Hub>) {
    loop {
        let Some(h) = hub.upgrade() else { return };
        if h.has_pending() {
            tokio::time::sleep(h.presence_window).await;
            h.flush_presence();
            continue;
        }
        let wake = h.wake.notified();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = wake => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::queue;

    #[test]
    fn a_room_fans_out_direct_unless_its_fan_outs_would_keep_up_no_more() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut room = Room::default();
        assert!(room.direct(t0), "the first message");
        room.last_start = Some(t0);
        room.set_cost(ms(4));
        assert!(!room.direct(t0 + ms(4)), "busy 4 ms of every 4: batch");
        assert!(
            !room.direct(t0 + ms(4) + ms(9) / 10),
            "4 of every 4.9 ms: batch"
        );
        assert!(room.direct(t0 + ms(5)), "4 of every 5 ms: direct");
        assert!(room.direct(t0 + ms(20)), "apart: direct");
        // A cost beyond what the room keeps (~4.3 s) saturates rather than wraps.
        room.set_cost(Duration::from_secs(10));
        assert!(!room.direct(t0 + Duration::from_secs(5)), "still busy");
    }

    #[test]
    fn a_room_and_its_name_fit_64_bytes() {
        // Every local user's inbox is one: the shard's table holds one per connection.
        let entry = std::mem::size_of::<(Arc<str>, Room)>();
        assert!(entry <= 64, "a room's entry is {entry} bytes");
    }

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

    fn presence_frames(rx: &mut crate::outbound::OutboundReceiver) -> Vec<PresencePush> {
        std::iter::from_fn(|| rx.try_recv_for_test())
            .filter_map(|i| match i {
                Outbound::Frame(f) => PresencePush::parse(&f),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_full_presence_batch_goes_out_before_its_window_ends() {
        // A window no test waits for: only a full batch or a flush pushes anything.
        let hub = Arc::new(Hub::new(Duration::from_secs(5)));
        let room: Arc<str> = "r".into();
        let (q, mut rx) = queue(64, 1 << 20);
        hub.subscribe(&room, 1, q);
        for i in 0..crate::presence::MAX_USERS + 1 {
            hub.presence("r", &format!("u{i}"), true);
        }
        hub.presence("elsewhere", "x", true); // no member here: nothing kept
        let frames = presence_frames(&mut rx);
        assert_eq!(frames.len(), 1, "the full batch");
        assert_eq!(frames[0].joined.len(), crate::presence::MAX_USERS);
        hub.flush_presence();
        let frames = presence_frames(&mut rx);
        let last = format!("u{}", crate::presence::MAX_USERS);
        assert_eq!(frames, [PresencePush::new("r", vec![last], vec![])]);
        hub.flush_presence();
        assert!(presence_frames(&mut rx).is_empty(), "nothing left pending");
    }

    #[test]
    fn without_a_window_each_change_is_its_own_frame() {
        let hub = Arc::new(Hub::default());
        let room: Arc<str> = "r".into();
        let (q, mut rx) = queue(8, 1024);
        hub.subscribe(&room, 1, q);
        hub.presence("r", "a", true);
        hub.presence("r", "a", false);
        assert_eq!(
            presence_frames(&mut rx),
            [
                PresencePush::change("r", "a", true),
                PresencePush::change("r", "a", false)
            ]
        );
    }
}
