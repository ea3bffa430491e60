//! Ordering per room: never a `(room, seq)` twice, and a catching-up room's live messages
//! held back until its replay is out. Kept with the queue (under its lock) rather than in
//! the writer, because the fan-out fast path ([`super::wire`]) writes live messages
//! itself while the writer is idle, and must decide exactly as the writer would.

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
    /// Write it (then [`Order::written`]).
    Write,
    /// Already written, or its room was left: drop it.
    Skip,
    /// Its room is catching up: hold it ([`Order::hold`]).
    Hold,
}

/// The ordering state of one connection.
#[derive(Default)]
pub(super) struct Order {
    rooms: HashMap<Arc<str>, RoomOrder>,
    /// Bytes of live messages held back while their rooms catch up.
    pub(super) held_bytes: usize,
    /// Messages written to the socket.
    pub(super) delivered: u64,
}

impl Order {
    /// Decides about a live message; changes nothing.
    pub(super) fn live(&self, env: &Envelope) -> Live {
        let Some(state) = self.rooms.get(&env.room) else {
            return Live::Skip; // left meanwhile
        };
        if state.held.is_some() {
            return Live::Hold;
        }
        if fresh(state, env) {
            Live::Write
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

    /// Notes that the live message `env` was written.
    pub(super) fn written(&mut self, env: &Envelope) {
        self.delivered += 1;
        if let Some(state) = self.rooms.get_mut(&env.room) {
            note(state, env);
        }
    }

    /// The room starts catching up: its live messages are held from now on.
    pub(super) fn begin_catchup(&mut self, room: Arc<str>) {
        self.rooms
            .entry(room)
            .or_default()
            .held
            .get_or_insert_with(Vec::new);
    }

    /// A replay from `from`: the messages of `msgs` to write, in order, each already
    /// noted as written.
    pub(super) fn replay(
        &mut self,
        room: Arc<str>,
        from: StreamPosition,
        msgs: Vec<Arc<Envelope>>,
    ) -> Vec<Arc<Envelope>> {
        let state = self.rooms.entry(room.clone()).or_default();
        match &mut state.written {
            Some(wr) if wr.epoch == from.epoch => wr.seq = wr.seq.max(from.seq),
            _ => state.written = Some(from),
        }
        self.admit(&room, msgs)
    }

    /// Ends a room's catch-up: its held messages to write, each already noted as written.
    pub(super) fn release(&mut self, room: Arc<str>) -> Vec<Arc<Envelope>> {
        let held = self
            .rooms
            .entry(room.clone())
            .or_default()
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

    /// Last position written per room, for the rooms whose epoch is known.
    pub(super) fn positions(&mut self) -> HashMap<Arc<str>, StreamPosition> {
        std::mem::take(&mut self.rooms)
            .into_iter()
            .filter_map(|(r, c)| Some((r, c.written?)))
            .collect()
    }

    /// The messages of `room` (a replay, or what was held) not written yet, in order,
    /// noted as written.
    fn admit(&mut self, room: &str, msgs: Vec<Arc<Envelope>>) -> Vec<Arc<Envelope>> {
        let Some(state) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
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

/// Notes `env` as the room's last written message.
fn note(state: &mut RoomOrder, env: &Envelope) {
    if env.seq > 0 {
        // Ephemeral messages (seq 0) are never stored nor replayed: not tracked.
        state.written = Some(StreamPosition::new(env.epoch.clone(), env.seq));
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
        Some(w) if w.epoch == env.epoch => w.seq,
        _ => 0,
    };
    env.seq > last
}
