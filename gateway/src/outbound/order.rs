//! Ordering per room: never a `(room, seq)` twice, and a catching-up room's live messages
//! held back until its replay is out. Kept with the queue (under its lock) rather than in
//! the writer, because the fan-out fast path ([`super::wire`]) writes live messages
//! itself while the writer is idle, and must decide exactly as the writer would.
//!
//! A room's position moves when a message is taken for the socket (the dedup needs that:
//! a message taken must not be taken again), but the positions reported at the end (what
//! the session saves for a resume) must name only what reached the socket. So the first
//! change to each room since the socket last took everything is noted with the position
//! before it (`unsent`): the writer drops these notes once its batch is flushed, and an
//! end with some left puts them back first.

use crate::engine::Envelope;
use crate::protocol::StreamPosition;
use std::collections::HashMap;
use std::sync::Arc;

/// One room: the last position written, and live messages held back while it catches up.
#[derive(Default)]
struct RoomOrder {
    /// Unknown until a replay or a message says the epoch; a message of another epoch
    /// restarts the count.
    written: Option<StreamPosition>,
    held: Option<Vec<Arc<Envelope>>>,
}

/// What to do with a live message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Live {
    /// Write it (then [`Order::written`] with this room).
    Write(Slot),
    /// Already written, or its room was left: drop it.
    Skip,
    /// Its room is catching up: hold it ([`Order::hold`]).
    Hold,
}

/// Where [`Order::live`] found a message's room: valid until the order next changes, so
/// [`Order::written`] does not search for it again (every delivery makes both calls, and
/// comparing room names was the largest user-space cost of a delivery at 50 messages/s).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Slot(usize);

/// Tables up to this size are scanned for the very name (a pointer compare each) before
/// the binary search compares names.
const SAME_NAME_SCAN: usize = 8;

/// The rooms of one connection, sorted by name: a connection has its inbox and at most
/// `limits.roomsPerConnection` rooms (100 by default), so a binary search is a few
/// comparisons, and an idle connection's one room (its inbox) takes 64 bytes where a
/// hash map's smallest table took 320.
#[derive(Default)]
struct Rooms(Vec<(Arc<str>, RoomOrder)>);

impl Rooms {
    fn find(&self, room: &str) -> Result<usize, usize> {
        // A delivery's room name is the hub's copy, the one this table holds too (see
        // `Hub::shared_name`): for the few rooms of most connections, the same pointer
        // finds it without comparing names.
        if self.0.len() <= SAME_NAME_SCAN {
            let same = |(name, _): &(Arc<str>, RoomOrder)| {
                std::ptr::eq(name.as_ptr(), room.as_ptr()) && name.len() == room.len()
            };
            if let Some(i) = self.0.iter().position(same) {
                return Ok(i);
            }
        }
        self.0.binary_search_by(|(name, _)| (**name).cmp(room))
    }

    #[cfg(test)]
    fn get(&self, room: &str) -> Option<&RoomOrder> {
        let i = self.find(room).ok()?;
        Some(&self.0[i].1)
    }

    fn get_mut(&mut self, room: &str) -> Option<&mut RoomOrder> {
        let i = self.find(room).ok()?;
        Some(&mut self.0[i].1)
    }

    /// The room's state, added if it has none.
    fn entry(&mut self, room: Arc<str>) -> &mut RoomOrder {
        let i = match self.find(&room) {
            Ok(i) => i,
            Err(i) => {
                // Grown one room at a time: a Vec's first growth makes room for four,
                // 256 bytes that every idle connection (one room, its inbox) would carry.
                // A join is rare beside a delivery: a reallocation per join is cheap.
                self.0.reserve_exact(1);
                self.0.insert(i, (room, RoomOrder::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    fn remove(&mut self, room: &str) -> Option<RoomOrder> {
        let i = self.find(room).ok()?;
        Some(self.0.remove(i).1)
    }
}

/// The ordering state of one connection. What every delivery reads and writes comes
/// first (see the queue's `Shared`).
#[derive(Default)]
#[repr(C)]
pub(super) struct Order {
    rooms: Rooms,
    /// Messages written to the socket.
    pub(super) delivered: u64,
    /// Bytes of live messages held back while their rooms catch up.
    pub(super) held_bytes: usize,
    /// Each room whose position moved past what the socket took, with the position the
    /// socket did take (at most one entry per room). Empty, without an allocation, while
    /// the connection is idle: the fast path writes whole frames without a note.
    unsent: Vec<(Arc<str>, Option<StreamPosition>)>,
}

impl Order {
    /// Decides about a live message; changes nothing.
    pub(super) fn live(&self, env: &Envelope) -> Live {
        let Ok(i) = self.rooms.find(&env.room) else {
            return Live::Skip; // left meanwhile
        };
        let state = &self.rooms.0[i].1;
        if state.held.is_some() {
            return Live::Hold;
        }
        if fresh(state, env) {
            Live::Write(Slot(i))
        } else {
            Live::Skip
        }
    }

    /// Holds a live message of a catching-up room.
    pub(super) fn hold(&mut self, env: Arc<Envelope>) {
        if let Some(held) = self.rooms.get_mut(&env.room).and_then(|s| s.held.as_mut()) {
            self.held_bytes += env.frame.len();
            held.push(env);
        }
    }

    /// Notes that the live message `env`, found at `slot` by [`live`](Self::live) with
    /// nothing changed since, was written: all of its frame is on the socket.
    pub(super) fn written(&mut self, slot: Slot, env: &Envelope) {
        self.delivered += 1;
        if let Some((name, state)) = self.rooms.0.get_mut(slot.0) {
            debug_assert_eq!(**name, *env.room, "a slot of another room");
            note(state, env);
        }
    }

    /// [`written`](Self::written) for a message taken for the socket that is not all on
    /// it yet (in a writer's batch, or sent in part): reported only once
    /// [`sent`](Self::sent) says it went.
    pub(super) fn written_unsent(&mut self, slot: Slot, env: &Envelope) {
        self.unsent_at(slot.0);
        self.written(slot, env);
    }

    /// Everything taken for the socket so far is on it: the positions stand.
    pub(super) fn sent(&mut self) {
        if !self.unsent.is_empty() {
            self.unsent = Vec::new(); // an idle connection holds no allocation
        }
    }

    /// Notes the position of the room at `i` before it moves past what the socket took,
    /// unless it moved already since the socket last took everything.
    fn unsent_at(&mut self, i: usize) {
        let Some((name, state)) = self.rooms.0.get(i) else {
            return;
        };
        if !self.unsent.iter().any(|(r, _)| same_name(r, name)) {
            self.unsent.push((name.clone(), state.written.clone()));
        }
    }

    /// The room starts catching up: its live messages are held from now on.
    pub(super) fn begin_catchup(&mut self, room: Arc<str>) {
        self.rooms.entry(room).held.get_or_insert_with(Vec::new);
    }

    /// A replay from `from`: the messages of `msgs` to write, in order, each already
    /// noted as written (not yet sent: see [`sent`](Self::sent)).
    pub(super) fn replay(
        &mut self,
        room: Arc<str>,
        from: StreamPosition,
        msgs: Vec<Arc<Envelope>>,
    ) -> Vec<Arc<Envelope>> {
        let state = self.rooms.entry(room.clone());
        raise(&mut state.written, &from);
        // The client has `from` itself, whatever of this batch reaches it: what the
        // socket took moves there too.
        if let Some((_, at)) = self.unsent.iter_mut().find(|(r, _)| same_name(r, &room)) {
            raise(at, &from);
        }
        self.admit(&room, msgs)
    }

    /// Ends a room's catch-up: its held messages to write, each already noted as written.
    pub(super) fn release(&mut self, room: Arc<str>) -> Vec<Arc<Envelope>> {
        let held = self
            .rooms
            .entry(room.clone())
            .held
            .take()
            .unwrap_or_default();
        let bytes: usize = held.iter().map(|m| m.frame.len()).sum();
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
        self.admit(&room, held)
    }

    /// The room was left: nothing of it is written any more.
    pub(super) fn forget(&mut self, room: &str) {
        if let Some(state) = self.rooms.remove(room) {
            let bytes: usize = state.held.iter().flatten().map(|m| m.frame.len()).sum();
            self.held_bytes = self.held_bytes.saturating_sub(bytes);
        }
    }

    /// Last position on the socket per room, for the rooms whose epoch is known: what
    /// was taken but never all sent (the end cut a batch or a frame short) is not in it.
    pub(super) fn positions(&mut self) -> HashMap<Arc<str>, StreamPosition> {
        for (room, at) in std::mem::take(&mut self.unsent) {
            if let Some(state) = self.rooms.get_mut(&room) {
                state.written = at;
            }
        }
        std::mem::take(&mut self.rooms.0)
            .into_iter()
            .filter_map(|(r, c)| Some((r, c.written?)))
            .collect()
    }

    /// The messages of `room` (a replay, or what was held) not written yet, in order,
    /// noted as written (not yet sent).
    fn admit(&mut self, room: &str, msgs: Vec<Arc<Envelope>>) -> Vec<Arc<Envelope>> {
        let Ok(i) = self.rooms.find(room) else {
            return Vec::new();
        };
        if !msgs.is_empty() {
            self.unsent_at(i);
        }
        let state = &mut self.rooms.0[i].1;
        let mut out = Vec::with_capacity(msgs.len());
        for env in msgs {
            if fresh(state, &env) {
                note(state, &env);
                out.push(env);
            }
        }
        self.delivered += out.len() as u64;
        out
    }
}

/// Moves a room's position up to `from` (a replay's start, which the client has): within
/// an epoch it only goes up; another epoch replaces it.
fn raise(at: &mut Option<StreamPosition>, from: &StreamPosition) {
    match at {
        Some(wr) if wr.epoch == from.epoch => wr.seq = wr.seq.max(from.seq),
        _ => *at = Some(from.clone()),
    }
}

/// Whether two room names are one: most often the same allocation (the hub's copy).
fn same_name(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Notes `env` as the room's last written message.
fn note(state: &mut RoomOrder, env: &Envelope) {
    if env.seq == 0 {
        return; // ephemeral messages are never stored nor replayed: not tracked
    }
    match &mut state.written {
        Some(w) if same_epoch(&w.epoch, &env.epoch) => w.seq = env.seq,
        written => *written = Some(StreamPosition::new(env.epoch.clone(), env.seq)),
    }
}

/// Whether `env` comes after what the room wrote (ephemeral messages always do). A
/// message of another epoch means history was lost and restarted (e.g. Redis came back
/// empty): seqs start over.
fn fresh(state: &RoomOrder, env: &Envelope) -> bool {
    if env.seq == 0 {
        return true;
    }
    let last = match &state.written {
        Some(w) if same_epoch(&w.epoch, &env.epoch) => w.seq,
        _ => 0,
    };
    env.seq > last
}

/// Whether two epochs are one: most often the same allocation (an engine hands its
/// room's epoch to every message), else compared by content.
fn same_epoch(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_found_whatever_the_order_they_came_in() {
        let mut rooms = Rooms::default();
        let names = ["m", "b", "z", "a", "q", "user:x"];
        for (seq, name) in names.iter().enumerate() {
            rooms.entry((*name).into()).written = Some(StreamPosition::new("e", seq as u64));
        }
        // An existing room is not added twice.
        rooms.entry("b".into()).held = Some(Vec::new());
        assert_eq!(rooms.0.len(), names.len());
        for (seq, name) in names.iter().enumerate() {
            let state = rooms.get(name).expect("found");
            assert_eq!(state.written.as_ref().map(|w| w.seq), Some(seq as u64));
        }
        assert!(rooms.get("b").is_some_and(|s| s.held.is_some()));
        assert!(rooms.remove("q").is_some());
        assert!(rooms.remove("q").is_none());
        assert!(rooms.get("q").is_none() && rooms.get_mut("nope").is_none());
        for name in ["a", "b", "m", "user:x", "z"] {
            assert!(rooms.get_mut(name).is_some(), "{name} still there");
        }
    }

    /// A room is found by its very name (the hub's copy) and by an equal copy alike; the
    /// same pointer with another length is another name.
    #[test]
    fn a_room_is_found_by_its_own_name_or_an_equal_copy() {
        let long: Arc<str> = "fan0x".into();
        let mut rooms = Rooms::default();
        rooms.entry(long.clone());
        rooms.entry("fan0".into());
        rooms.entry("user:x".into());
        let at = |room: &str| rooms.find(room).map(|i| rooms.0[i].0.to_string());
        assert_eq!(at(&long), Ok("fan0x".to_string()));
        assert_eq!(at("fan0x"), Ok("fan0x".to_string()));
        // `fan0` starts at the same address as the table's `fan0x`.
        assert_eq!(at(&long[..4]), Ok("fan0".to_string()));
        assert_eq!(at(&long[..3]), Err(0), "`fan` is in neither");
    }

    /// Through the slot `live` hands out, each message is written once per room, whether
    /// its epoch is the room's own allocation or an equal copy; another epoch starts over.
    #[test]
    fn a_message_is_written_once_however_its_epoch_compares() {
        let epoch: Arc<str> = "e1".into();
        let mut order = Order::default();
        for room in ["b", "a", "c"] {
            order.replay(
                room.into(),
                StreamPosition::new(epoch.clone(), 0),
                Vec::new(),
            );
        }
        let msg = |room: &str, epoch: &Arc<str>, seq| {
            Envelope::new(room.into(), seq, epoch.clone(), 0, None, "x")
        };
        let mut write = |env: Envelope| match order.live(&env) {
            Live::Write(slot) => {
                order.written(slot, &env);
                true
            }
            _ => false,
        };
        assert!(write(msg("b", &epoch, 1)));
        assert!(!write(msg("b", &epoch, 1)), "once");
        let copy: Arc<str> = "e1".into();
        assert!(
            !write(msg("b", &copy, 1)),
            "an equal epoch is the same epoch"
        );
        assert!(write(msg("b", &copy, 2)));
        assert!(!write(msg("b", &epoch, 2)), "the copy's position holds");
        assert!(write(msg("c", &epoch, 1)), "another room's count");
        assert!(write(msg("a", &epoch, 1)));
        let next: Arc<str> = "e2".into();
        assert!(write(msg("b", &next, 1)), "another epoch starts over");
        assert!(!write(msg("b", &next, 1)));
        assert!(!write(msg("gone", &epoch, 1)), "a room not joined");
        assert_eq!(order.delivered, 5);
    }

    #[test]
    fn an_idle_connections_one_room_takes_64_bytes() {
        let mut rooms = Rooms::default();
        rooms.entry("user:x".into());
        assert_eq!(rooms.0.capacity(), 1, "room for one, not four");
        let entry = std::mem::size_of::<(Arc<str>, RoomOrder)>();
        assert!(entry <= 64, "a room's entry is {entry} bytes");
    }
}
