//! The memory engine's budget (`memory.maxBytes`): how many bytes of messages (and of the
//! msg ids remembered for deduplication) the process holds, and which go first when that
//! is too many.
//!
//! Retention alone bounds a room, not the pod: every room keeps `history.maxMessages`
//! for `history.maxAge`, and rooms are as many as users start (a user's sends start
//! `limits.newRoomsPerHour`). Without a total, a pod's history grew until the kernel
//! killed it, and with it every room's history and every undelivered DM. With one, a
//! publish that takes the total over `maxBytes` drops the oldest messages, of rooms first
//! (chatter anyone may reread), of inboxes only once no room has any left (a DM waits for
//! its reader), down to nine tenths of the budget so that the walk over the rooms it takes
//! is paid once per tenth of the budget, not once per message.

use super::{lock, MemoryEngine};
use crate::config::MemoryConfig;
use crate::engine::Envelope;
use prometheus::{IntCounter, IntGauge};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a stored message costs beyond its frame: the envelope and its `Arc`, the stream's
/// slot, the allocator's rounding. Measured on a gateway's RSS while 38,000 messages went
/// into 40 rooms: 924 bytes a message with 100-byte bodies, 1,821 with 1,000-byte bodies,
/// where frame plus 640 counted 888 and 1,788. That 640 held the message's msg-id entry
/// too (then two copies of its key, about 225 bytes), which is counted on its own now
/// ([`PER_MSG_ID`]): an id outlives its message for `sessions.dedupWindow` when the
/// message is trimmed or evicted, and a pod taking 2,000 sends a second held 600,000 of
/// them (about 150 MB) outside the budget.
pub(super) const PER_MESSAGE: u64 = 416;

/// What a remembered msg id costs beyond its key's bytes: its map slot (key, seq, epoch,
/// expiry), its slot in the expiry order, the key's one allocation, rounding (estimated
/// from the layout).
pub(super) const PER_MSG_ID: u64 = 144;

/// Where the cgroup v2 memory limit of the process's container is (`max`: none).
const CGROUP_V2_MAX: &str = "/sys/fs/cgroup/memory.max";
/// The cgroup v1 equivalent (a huge number: none).
const CGROUP_V1_LIMIT: &str = "/sys/fs/cgroup/memory/memory.limit_in_bytes";
/// A cgroup v1 limit at or above this is "no limit" (the kernel reports a page-rounded
/// `i64::MAX`).
const V1_UNLIMITED: u64 = 1 << 62;

/// Bytes of messages held, the budget, and what eviction dropped.
pub(super) struct Budget {
    max: u64,
    /// Bytes of messages held now (a metric, and the total the budget is checked against).
    held: IntGauge,
    pub(super) evicted_rooms: IntCounter,
    pub(super) evicted_inboxes: IntCounter,
    pub(super) evicted_ids: IntCounter,
    /// One eviction at a time: a second publisher over the budget leaves it to the first.
    evicting: AtomicBool,
}

/// Counters of a budget: the bytes held and the messages evicted, of rooms and of inboxes.
pub struct BudgetCounters {
    /// Bytes of messages held.
    pub held: IntGauge,
    /// The budget in force (set once, at the start).
    pub max: IntGauge,
    /// Room messages evicted.
    pub evicted_rooms: IntCounter,
    /// Inbox messages evicted.
    pub evicted_inboxes: IntCounter,
    /// Msg ids forgotten before their dedup window ended.
    pub evicted_ids: IntCounter,
}

impl BudgetCounters {
    /// Counters registered nowhere (tests, and engines built without a node's metrics).
    pub fn unregistered() -> Self {
        let counter = |name: &str| IntCounter::new(name, name).expect("valid metric name");
        BudgetCounters {
            held: IntGauge::new("held", "held").expect("valid metric name"),
            max: IntGauge::new("max", "max").expect("valid metric name"),
            evicted_rooms: counter("evicted_rooms"),
            evicted_inboxes: counter("evicted_inboxes"),
            evicted_ids: counter("evicted_ids"),
        }
    }
}

impl Budget {
    pub(super) fn new(max: u64, counters: BudgetCounters) -> Self {
        counters.max.set(i64::try_from(max).unwrap_or(i64::MAX));
        Budget {
            max,
            held: counters.held,
            evicted_rooms: counters.evicted_rooms,
            evicted_inboxes: counters.evicted_inboxes,
            evicted_ids: counters.evicted_ids,
            evicting: AtomicBool::new(false),
        }
    }

    /// What holding `env` costs.
    pub(super) fn cost(env: &Envelope) -> u64 {
        env.wire().len() as u64 + PER_MESSAGE
    }

    /// What remembering the msg id `key` (`"from\0msg_id"`) costs.
    pub(super) fn id_cost(key: &str) -> u64 {
        key.len() as u64 + PER_MSG_ID
    }

    pub(super) fn add(&self, bytes: u64) {
        self.held.add(bytes as i64);
    }

    pub(super) fn sub(&self, bytes: u64) {
        self.held.sub(bytes as i64);
    }

    pub(super) fn held(&self) -> u64 {
        self.held.get().max(0) as u64
    }

    /// Whether the messages held are over the budget (an eviction is due).
    pub(super) fn over(&self) -> bool {
        self.held() > self.max
    }

    /// Whether an eviction under way should go on: above nine tenths of the budget.
    pub(super) fn above_low_water(&self) -> bool {
        self.held() > self.max - self.max / 10
    }

    /// Counts an evicted message.
    pub(super) fn evicted(&self, inbox: bool) {
        if inbox {
            self.evicted_inboxes.inc();
        } else {
            self.evicted_rooms.inc();
        }
    }

    /// The right to evict, if no one else holds it; given back when dropped.
    pub(super) fn start_eviction(&self) -> Option<Evicting<'_>> {
        (!self.evicting.swap(true, Ordering::AcqRel)).then_some(Evicting(self))
    }
}

/// The one eviction under way ([`Budget::start_eviction`]).
pub(super) struct Evicting<'a>(&'a Budget);

impl Drop for Evicting<'_> {
    fn drop(&mut self) {
        self.0.evicting.store(false, Ordering::Release);
    }
}

impl MemoryEngine {
    /// Drops the oldest messages until nine tenths of the budget are held: rooms' first,
    /// inboxes' once no room has any left, oldest first within each; then, if msg ids
    /// alone hold more, the ids expiring first (a send retried with one of those is
    /// stored again).
    ///
    /// Takes the streams map's lock only to list the streams, then one stream's lock at a
    /// time: publishers (which lock the map, then their stream) never wait on it for more
    /// than one stream's worth of drops.
    pub(super) fn evict(&self) {
        let Some(_evicting) = self.budget.start_eviction() else {
            return;
        };
        let streams: Vec<_> = lock(&self.streams)
            .iter()
            .map(|(room, s)| (crate::protocol::is_inbox(room), s.clone()))
            .collect();
        // (inbox, oldest message's append time, stream): the smallest goes first.
        let mut queue: BinaryHeap<_> = streams
            .iter()
            .enumerate()
            .filter_map(|(i, (inbox, s))| Some(Reverse((*inbox, lock(s).oldest()?, i))))
            .collect();
        while self.budget.above_low_water() {
            let Some(Reverse((inbox, _, i))) = queue.pop() else {
                break;
            };
            let next = queue.peek().map(|Reverse((inbox, ts, _))| (*inbox, *ts));
            let mut s = lock(&streams[i].1);
            // This stream's messages go while they are the oldest of all.
            while let Some(ts) = s.oldest() {
                if next.is_some_and(|next| (inbox, ts) > next) {
                    queue.push(Reverse((inbox, ts, i)));
                    break;
                }
                if !self.budget.above_low_water() {
                    break;
                }
                s.pop();
                self.budget.evicted(inbox);
            }
        }
        if !self.budget.above_low_water() {
            return;
        }
        let mut ids: BinaryHeap<_> = streams
            .iter()
            .enumerate()
            .filter_map(|(i, (_, s))| Some(Reverse((lock(s).oldest_id()?, i))))
            .collect();
        while self.budget.above_low_water() {
            let Some(Reverse((_, i))) = ids.pop() else {
                break;
            };
            let mut s = lock(&streams[i].1);
            s.forget_oldest_id();
            self.budget.evicted_ids.inc();
            if let Some(next) = s.oldest_id() {
                ids.push(Reverse((next, i)));
            }
        }
    }
}

/// The budget in force and why: `memory.maxBytes`, else half the container's memory limit,
/// else [`MemoryConfig::UNLIMITED_CONTAINER_BYTES`].
pub fn resolve(config: &MemoryConfig) -> (u64, &'static str) {
    if let Some(max) = config.max_bytes {
        return (max, "memory.maxBytes");
    }
    let read = |path: &str| std::fs::read_to_string(path).ok();
    match container_limit(read(CGROUP_V2_MAX), read(CGROUP_V1_LIMIT)) {
        // Half: the rest is for connections (about 10 KB each), buffers and the runtime.
        Some(limit) => (
            (limit / 2).max(MemoryConfig::MIN_BYTES),
            "half the container's memory limit",
        ),
        None => (
            MemoryConfig::UNLIMITED_CONTAINER_BYTES,
            "no container memory limit",
        ),
    }
}

/// The memory limit of the process's cgroup from the contents of its cgroup v2
/// `memory.max` or, failing that, its cgroup v1 `memory.limit_in_bytes`; `None` without one.
pub(super) fn container_limit(v2: Option<String>, v1: Option<String>) -> Option<u64> {
    if let Some(v2) = v2 {
        // "max" (no limit) parses as nothing, as it should.
        return v2.trim().parse().ok();
    }
    v1?.trim().parse().ok().filter(|l| *l < V1_UNLIMITED)
}
