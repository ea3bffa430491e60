//! What this node has seen of each room: the highest (epoch, seq) from publish results,
//! deliveries and history reads. The store is the source of truth, except when it falls
//! *behind* (restored from an older snapshot, failed over to a lagging replica): then this
//! memory is the only witness, and the epoch rule ([`Engine`](super::Engine)) starts a new
//! epoch instead of numbering on over seqs clients already have.
//!
//! Bounded: two generations of at most [`GENERATION`] rooms each; when the young one is
//! full it becomes the old one and the previous old one is dropped. A room touched in
//! either generation is remembered (and moves to the young one), so the rooms in use stay
//! and rooms nobody touched for two generations are forgotten (they have no witness, as
//! on a freshly started node).

use crate::protocol::StreamPosition;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Rooms per generation.
const GENERATION: usize = 32_768;

#[derive(Default)]
struct Generations {
    young: HashMap<Arc<str>, StreamPosition>,
    old: HashMap<Arc<str>, StreamPosition>,
}

/// The highest position this node has seen per room (bounded, see the module docs).
#[derive(Default)]
pub struct SeenTops {
    inner: Mutex<Generations>,
}

impl SeenTops {
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `room` reached `seq` in `epoch`: within an epoch the highest seq stays;
    /// another epoch replaces the entry (a new epoch started, by the rule or after a loss).
    pub fn observe(&self, room: &str, epoch: &str, seq: u64) {
        let mut g = self.lock();
        let known = g.young.remove(room).or_else(|| g.old.remove(room));
        let at = match known {
            Some(k) if &*k.epoch == epoch => StreamPosition::new(k.epoch, k.seq.max(seq)),
            _ => StreamPosition::new(epoch, seq),
        };
        if g.young.len() >= GENERATION {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(room.into(), at);
    }

    /// Forgets `room`.
    pub fn forget(&self, room: &str) {
        let mut g = self.lock();
        g.young.remove(room);
        g.old.remove(room);
    }

    /// The highest position seen of `room`, if remembered.
    pub fn get(&self, room: &str) -> Option<StreamPosition> {
        let g = self.lock();
        g.young.get(room).or_else(|| g.old.get(room)).cloned()
    }

    /// Whether a store reporting `top` in `epoch` for `room` has fallen behind this node.
    pub fn behind(&self, room: &str, epoch: &str, top: u64) -> bool {
        self.get(room)
            .is_some_and(|seen| &*seen.epoch == epoch && top < seen.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest_seq_of_an_epoch_and_follows_a_new_epoch() {
        let s = SeenTops::default();
        s.observe("r", "e1", 5);
        s.observe("r", "e1", 3);
        assert_eq!(s.get("r"), Some(StreamPosition::new("e1", 5)));
        assert!(s.behind("r", "e1", 4));
        assert!(!s.behind("r", "e1", 5));
        assert!(!s.behind("r", "e2", 1), "another epoch is not behind");
        s.observe("r", "e2", 1);
        assert_eq!(s.get("r"), Some(StreamPosition::new("e2", 1)));
        assert!(!s.behind("other", "e1", 0), "unknown rooms have no witness");
    }

    #[test]
    fn is_bounded_and_keeps_rooms_in_use() {
        let s = SeenTops::default();
        s.observe("busy", "e", 1);
        for i in 0..(GENERATION * 3) {
            s.observe(&format!("r{i}"), "e", 1);
            if i % 1000 == 0 {
                s.observe("busy", "e", 2);
            }
        }
        let g = s.lock();
        assert!(g.young.len() + g.old.len() <= 2 * GENERATION);
        drop(g);
        assert_eq!(s.get("busy"), Some(StreamPosition::new("e", 2)));
        assert_eq!(s.get("r0"), None, "forgotten after two generations");
    }
}
