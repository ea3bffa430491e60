//! Hub: this node's rooms and their local subscribers.
//!
//! The engine hands every message for a room to the hub once; the hub queues the same
//! serialised bytes (an `Arc`) to each local subscriber, so fan-out costs one atomic
//! increment per recipient, not one serialisation.
//!
//! Presence changes are batched per room for `limits.presenceBatch` (see
//! [`crate::presence`]): the engines report each change here, on every node alike, and
//! one task per node pushes each room's batch as one frame when its window ends.
//!
//! A busy room's messages wake its members' writers once per `limits.fanoutBatch`
//! ([`wakes`]).

mod members;
mod wakes;

use crate::disconnect::CloseReason;
use crate::engine::Envelope;
use crate::metrics::Deliveries;
use crate::outbound::{Delivered, Outbound, OutboundQueue, Pusher, Via};
use crate::presence::Batch;
use crate::protocol::push::PresencePush;
use members::{Members, Targets};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// come so fast that such fan-outs would keep the delivering task busy half the time or
/// more, they go through the members' writers instead, which batch what piles up:
/// several frames per syscall. The room keeps what its direct fan-outs take (smoothed:
/// each new one counts a quarter, see [`Room::note_cost`]), and a message goes direct if
/// it comes at least [`DIRECT_GAP`] times that long after the previous one. One that
/// does not is queued without waking the writers, and they are woken once a window later
/// (`limits.fanoutBatch`, [`wakes`]), when each has the window's messages to write at
/// once. Every [`PROBE_AFTER`] wakes, a busy room's next message goes direct whatever
/// its gap: its fan-outs are measured again, so an estimate left too high by a slow
/// moment cannot keep the room batching.
///
/// Every local user's inbox is a room here, so a room is kept small: 48 bytes, 64 with
/// its name in the shard's table (104 with the cost as a `Duration` and the members' map
/// inline), which an idle connection pays about one and a half times over.
#[derive(Default)]
struct Room {
    subs: Members,
    /// When the last fan-out started.
    last_start: Option<Instant>,
    /// What a direct fan-out takes, smoothed over the last few, in ns (at most ~4.3 s;
    /// 0 before the first).
    direct_ns: u32,
    /// Messages were queued quietly and the room waits in [`wakes`] for its writers'
    /// wake: until then its messages are queued quietly too.
    wake_due: bool,
    /// Wakes since the room's last direct fan-out (saturating; see [`PROBE_AFTER`]).
    wakes_since_direct: u16,
}

/// A message fans out direct if it comes at least this many times what the room's direct
/// fan-out takes after the previous one. At 5/4 (batching only rooms whose fan-outs
/// would keep the task 80% busy) a 1,000-member room at 200 messages/s sat on the edge
/// here (its fan-outs take 2.5 to 3.3 ms of the 5 between messages) and went direct or
/// batched with the machine's speed: 2.4 to 2.9 µs of CPU per delivery, p99 39 to 48 ms.
/// At 2 it batches: 1.2 to 1.8 µs, p99 35 to 41 ms (bench/ab.md, 4 December, midnight).
/// A quiet room keeps its margin: at 50 messages/s it would batch only once its fan-outs
/// took 10 ms (10 µs per member of 1,000; they take 3 to 6).
const DIRECT_GAP: u32 = 2;

/// After this many wakes without a direct fan-out (about eight seconds at the default
/// 30 ms `limits.fanoutBatch`), a busy room's next message goes direct: nothing else
/// measures what its fan-out takes while it batches. An estimate too high (fan-outs
/// slowed by something else on the core) would otherwise stay until a message came
/// [`DIRECT_GAP`] times it after the last, which messages that regular (a ticker, a load
/// generator) may never do. The probe's cost counts a quarter like any other. It is rare
/// because it costs the room's other messages latency: every 32 wakes showed in the p99,
/// every 255 did not (bench/ab.md, 4 December, afternoon).
const PROBE_AFTER: u16 = 256;

impl Room {
    /// Whether a message arriving `now` fans out direct.
    fn direct(&self, now: Instant) -> bool {
        let cost = Duration::from_nanos(u64::from(self.direct_ns));
        self.wakes_since_direct >= PROBE_AFTER
            || self
                .last_start
                .is_none_or(|last| now.saturating_duration_since(last) >= cost * DIRECT_GAP)
    }

    /// A handle on each member's queue, to serve them after the shard's lock.
    fn pushers(&mut self) -> Targets {
        self.subs.pushers()
    }

    /// Notes how long a direct fan-out took. Each counts a quarter, the room's first too
    /// (from nothing): one fan-out slowed by something else on the core (at 50 messages/s
    /// to 1,000 members, one in a hundred took 2.5 times the median) would otherwise
    /// alone make a quiet room's next messages wait for the batch window, and with them
    /// its p99 latency. So would a room's first, on cold sockets (9.5 to 19 ms against
    /// medians of 6.5 to 9.3; bench/ab.md, 4 December). While the room batches, only
    /// its probes ([`PROBE_AFTER`]) measure it.
    fn note_cost(&mut self, cost: Duration) {
        let cost = u64::try_from(cost.as_nanos()).unwrap_or(u64::MAX);
        let old = u64::from(self.direct_ns);
        self.direct_ns = u32::try_from(old - old / 4 + cost / 4).unwrap_or(u32::MAX);
    }

    /// Sets what a direct fan-out takes, as if all of the last few had taken `cost`.
    #[cfg(test)]
    fn set_cost(&mut self, cost: Duration) {
        self.direct_ns = u32::try_from(cost.as_nanos()).unwrap_or(u32::MAX);
    }
}

/// Local room -> subscriber map, sharded by room to keep lock hold times short.
pub struct Hub {
    shards: Vec<Mutex<HashMap<Arc<str>, Room>>>,
    /// Rooms with local subscribers (the shards' sizes summed), kept as they change: the
    /// rooms gauge reads it at every connection's inbox subscribe and unsubscribe, and
    /// summing the shards there took a lock of each of them.
    rooms: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
    /// How long presence changes are collected (0: each is pushed at once).
    presence_window: Duration,
    /// Rooms with presence changes waiting for the end of the window.
    pending: Mutex<HashMap<Arc<str>, Batch>>,
    /// Tells the flush task that a window started.
    wake: Notify,
    started: OnceLock<()>,
    /// How long a busy room's messages wait for their writers' wake (0: none waits).
    fanout_window: Duration,
    wakes: wakes::Wakes,
    wakes_started: OnceLock<()>,
    /// Counts what a fan-out writes itself (none: not counted; tests, tools).
    deliveries: Option<Deliveries>,
}

impl Default for Hub {
    /// A hub pushing each presence change at once and waking writers per message (tests,
    /// tools).
    fn default() -> Self {
        Hub::new(Duration::ZERO, Duration::ZERO)
    }
}

impl Hub {
    /// A hub batching presence changes for `presence_window` (`limits.presenceBatch`),
    /// and a busy room's wakes for `fanout_window` (`limits.fanoutBatch`).
    pub fn new(presence_window: Duration, fanout_window: Duration) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            rooms: AtomicUsize::new(0),
            hasher: Default::default(),
            presence_window,
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            started: OnceLock::new(),
            fanout_window,
            wakes: Default::default(),
            wakes_started: OnceLock::new(),
            deliveries: None,
        }
    }

    /// The hub, counting what its fan-outs write to sockets in `deliveries` (the writers
    /// count what they write).
    pub fn counting(self, deliveries: Deliveries) -> Self {
        Hub {
            deliveries: Some(deliveries),
            ..self
        }
    }

    fn shard(&self, room: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Room>> {
        let shard = &self.shards[(self.hasher.hash_one(room) as usize) % SHARDS];
        // A poisoned shard only means a panic elsewhere mid-update of plain maps; the data
        // is still consistent enough to keep serving.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets what a direct fan-out of `room` takes (tests).
    #[cfg(test)]
    pub(crate) fn set_direct_cost(&self, room: &str, cost: Duration) {
        if let Some(room) = self.shard(room).get_mut(room) {
            room.set_cost(cost);
        }
    }

    /// The hub's own copy of a room's name while the room has local members, else `room`.
    /// A joiner takes it, so every member's tables (session, write order) share one
    /// allocation of the name instead of one each. A fan-out looks the room up in each
    /// member's write-order table: it then compares against one copy in cache rather
    /// than loading one per member (that lookup's share of a delivery's CPU at 50
    /// messages/s to 1,000 members: 4.2% before, 3.1% after; bench/ab.md).
    pub fn shared_name(&self, room: &Arc<str>) -> Arc<str> {
        self.copy_of(room).unwrap_or_else(|| room.clone())
    }

    /// The hub's copy of `room`'s name, else a new one: for a message arriving by name (a
    /// Redis delivery), allocated only when no local member holds the room.
    pub fn name_of(&self, room: &str) -> Arc<str> {
        self.copy_of(room).unwrap_or_else(|| room.into())
    }

    fn copy_of(&self, room: &str) -> Option<Arc<str>> {
        self.shard(room)
            .get_key_value(room)
            .map(|(name, _)| name.clone())
    }

    /// Adds a subscriber; true when it is the room's first local subscriber.
    pub fn subscribe(&self, room: &Arc<str>, conn: ConnId, queue: OutboundQueue) -> bool {
        let mut shard = self.shard(room);
        let subs = &mut shard.entry(room.clone()).or_default().subs;
        let first = subs.is_empty();
        subs.insert(conn, queue);
        if first {
            self.rooms.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// Removes a subscriber; true when the room has no local subscriber left.
    pub fn unsubscribe(&self, room: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(room);
        let Some(r) = shard.get_mut(room) else {
            return false;
        };
        let Some(queue) = r.subs.remove(conn) else {
            return false;
        };
        if r.wake_due {
            queue.pusher().wake(); // the room's wake will not reach it now
        }
        if r.subs.is_empty() {
            shard.remove(room);
            self.rooms.fetch_sub(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Closes the connection of every local subscriber of `room` with `reason`; returns
    /// how many. For a gap that cannot be delivered (see the Redis engine's gap fill): a
    /// member that went on reading past it would never learn it missed anything.
    pub fn close_members(&self, room: &str, reason: CloseReason) -> usize {
        let shard = self.shard(room);
        let Some(r) = shard.get(room) else {
            return 0;
        };
        let mut n = 0;
        for queue in r.subs.queues() {
            queue.close(reason);
            n += 1;
        }
        n
    }

    /// Delivers a room message to every local subscriber, straight to its socket or
    /// through its queue (see [`Room`]); returns how many took it.
    pub fn deliver(self: &Arc<Self>, env: &Arc<Envelope>) -> usize {
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
        let mut newly_due = false;
        let (targets, via) = {
            let mut shard = self.shard(&env.room);
            let Some(room) = shard.get_mut(&env.room) else {
                return 0;
            };
            let via = if room.wake_due {
                Via::Quiet
            } else if room.direct(start) {
                room.wakes_since_direct = 0;
                Via::Direct
            } else if self.fanout_window.is_zero() {
                Via::Queue
            } else {
                room.wake_due = true;
                newly_due = true;
                Via::Quiet
            };
            room.last_start = Some(start);
            (room.pushers(), via)
        };
        if newly_due {
            self.wakes_started.get_or_init(|| {
                tokio::spawn(wakes::run(Arc::downgrade(self)));
            });
            self.wakes.add(start + self.fanout_window, env.room.clone());
        }
        let mut n = 0;
        let mut tally = self.deliveries.as_ref().map(Deliveries::tally);
        // Each member's memory is cold (see `Pusher::prefetch`): its queue's lines are
        // asked for two members ahead, its socket one ahead (found in those lines).
        targets.iter().take(2).for_each(Pusher::prefetch);
        for (i, q) in targets.iter().enumerate() {
            if let Some(next) = targets.get(i + 2) {
                next.prefetch();
            }
            if let Some(next) = targets.get(i + 1) {
                next.prefetch_wire();
            }
            let done = q.deliver(env, via);
            if let (Delivered::Written, Some(tally)) = (done, &mut tally) {
                tally.written(env.ts);
            }
            n += usize::from(done.taken());
        }
        drop(tally);
        match via {
            Via::Direct => {
                if let Some(room) = self.shard(&env.room).get_mut(&env.room) {
                    room.note_cost(start.elapsed());
                }
            }
            Via::Quiet => {
                // The queues were filled after the lock: if the room's wake came in between,
                // it missed these messages, and they are woken for here.
                let waiting = self
                    .shard(&env.room)
                    .get(&env.room)
                    .is_some_and(|r| r.wake_due);
                if !waiting {
                    targets.iter().for_each(|q| q.wake());
                }
            }
            Via::Queue => {}
        }
        span.record("recipients", n);
        n
    }

    /// Wakes the writers of the rooms due by `now` ([`wakes`]).
    fn wake_due(&self, now: Instant) {
        for name in self.wakes.take_due(now) {
            let targets = {
                let mut shard = self.shard(&name);
                let Some(room) = shard.get_mut(&name) else {
                    continue; // emptied meanwhile: each leaving member was woken
                };
                room.wake_due = false;
                room.wakes_since_direct = room.wakes_since_direct.saturating_add(1);
                room.pushers()
            };
            targets.iter().for_each(|q| q.wake());
        }
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
        self.rooms.load(Ordering::Relaxed)
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
mod tests;
