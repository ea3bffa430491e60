//! A room's local members, and the handles a fan-out serves them through.

use super::ConnId;
use crate::outbound::{OutboundQueue, Pusher};
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

/// A room's local members: inline while there is one, a map from the second on.
///
/// Most rooms of a node have a single local member: every connection's inbox is a room of
/// its own. A map of one costs hashbrown's smallest table, an allocation of about a hundred
/// bytes that every idle connection would carry.
#[derive(Default)]
pub(super) enum Members {
    #[default]
    None,
    One(ConnId, OutboundQueue),
    /// Boxed: inline, the map (48 bytes) would size every room, inboxes included.
    Many(Box<Many>),
}

/// Two members or more, and the handles of the last fan-out while they stay the same.
///
/// A fan-out used to take a handle on each member (an `Arc` clone: an atomic increment
/// on the member's queue) under the shard's lock, and drop them all after: two atomic
/// operations per delivery, the first on a line the kernel's writes had evicted since the
/// last message, one member after the other with the lock held. Rooms that fan out often
/// keep their members for many messages, so the handles are kept until a member comes or
/// goes, and a fan-out takes one `Arc` of them all.
#[derive(Default)]
pub(super) struct Many {
    map: HashMap<ConnId, OutboundQueue>,
    /// Set at a fan-out, dropped when the members change.
    pushers: Option<Arc<[Pusher]>>,
}

/// The members a fan-out serves, taken under the shard's lock and served after it.
pub(super) enum Targets {
    None,
    One(Pusher),
    Many(Arc<[Pusher]>),
}

impl Deref for Targets {
    type Target = [Pusher];

    fn deref(&self) -> &[Pusher] {
        match self {
            Targets::None => &[],
            Targets::One(p) => std::slice::from_ref(p),
            Targets::Many(all) => all,
        }
    }
}

impl Members {
    pub fn is_empty(&self) -> bool {
        matches!(self, Members::None)
    }

    /// Adds `conn` (or replaces its queue).
    pub fn insert(&mut self, conn: ConnId, queue: OutboundQueue) {
        match self {
            Members::None => *self = Members::One(conn, queue),
            Members::One(id, q) if *id == conn => *q = queue,
            Members::One(..) => {
                if let Members::One(id, q) = std::mem::take(self) {
                    *self = Members::Many(Box::new(Many {
                        map: HashMap::from([(id, q), (conn, queue)]),
                        pushers: None,
                    }));
                }
            }
            Members::Many(many) => {
                many.map.insert(conn, queue);
                many.pushers = None;
            }
        }
    }

    /// Removes `conn`, giving back its queue; none if it was not a member. A map left with
    /// one member goes back inline, and its memory with it.
    pub fn remove(&mut self, conn: ConnId) -> Option<OutboundQueue> {
        match self {
            Members::None => None,
            Members::One(id, _) if *id != conn => None,
            Members::One(..) => match std::mem::take(self) {
                Members::One(_, q) => Some(q),
                _ => None,
            },
            Members::Many(many) => {
                let removed = many.map.remove(&conn)?;
                many.pushers = None;
                if many.map.len() <= 1 {
                    let last = many.map.drain().next();
                    *self = match last {
                        Some((id, q)) => Members::One(id, q),
                        None => Members::None,
                    };
                }
                Some(removed)
            }
        }
    }

    /// Every member's queue.
    pub fn queues(&self) -> impl Iterator<Item = &OutboundQueue> {
        let (one, many) = match self {
            Members::None => (None, None),
            Members::One(_, q) => (Some(q), None),
            Members::Many(many) => (None, Some(many.map.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// A handle on each member's queue for a fan-out: the same handles as the last
    /// fan-out's while no member came or went (see [`Many`]).
    pub fn pushers(&mut self) -> Targets {
        match self {
            Members::None => Targets::None,
            Members::One(_, q) => Targets::One(q.pusher()),
            Members::Many(many) => {
                let Many { map, pushers } = &mut **many;
                let all = pushers
                    .get_or_insert_with(|| map.values().map(OutboundQueue::pusher).collect());
                Targets::Many(all.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound;

    fn q() -> OutboundQueue {
        outbound::queue(8, 1024).0
    }

    fn ids(m: &Members) -> usize {
        m.queues().count()
    }

    #[test]
    fn one_member_is_inline_and_a_second_makes_a_map() {
        let mut m = Members::default();
        assert!(m.is_empty());
        m.insert(1, q());
        assert!(matches!(m, Members::One(1, _)), "no map for one member");
        m.insert(1, q());
        assert!(matches!(m, Members::One(1, _)), "the same member again");
        m.insert(2, q());
        assert!(matches!(&m, Members::Many(many) if many.map.len() == 2));
        m.insert(3, q());
        assert_eq!(ids(&m), 3);
    }

    #[test]
    fn removing_goes_back_inline_then_empty() {
        let mut m = Members::default();
        for id in 1..=3 {
            m.insert(id, q());
        }
        assert!(m.remove(9).is_none(), "not a member");
        assert!(m.remove(2).is_some());
        assert!(matches!(&m, Members::Many(many) if many.map.len() == 2));
        assert!(m.remove(1).is_some());
        assert!(
            matches!(m, Members::One(3, _)),
            "the last one goes back inline"
        );
        assert!(m.remove(1).is_none(), "already removed");
        assert!(m.remove(3).is_some());
        assert!(m.is_empty());
        assert_eq!(ids(&m), 0);
    }

    fn same(a: &Targets, b: &Targets) -> bool {
        matches!((a, b), (Targets::Many(a), Targets::Many(b)) if Arc::ptr_eq(a, b))
    }

    #[test]
    fn a_fan_outs_handles_are_kept_until_a_member_comes_or_goes() {
        let mut m = Members::default();
        assert_eq!(m.pushers().len(), 0);
        m.insert(1, q());
        assert!(
            matches!(m.pushers(), Targets::One(_)),
            "one member: no snapshot"
        );
        m.insert(2, q());
        let first = m.pushers();
        assert_eq!(first.len(), 2);
        assert!(same(&first, &m.pushers()), "no change: the same handles");
        m.insert(3, q());
        let joined = m.pushers();
        assert_eq!(
            joined.len(),
            3,
            "a joiner is served from the next fan-out on"
        );
        assert!(!same(&first, &joined));
        assert!(m.remove(9).is_none());
        assert!(same(&joined, &m.pushers()), "not a member: nothing changed");
        assert!(m.remove(1).is_some());
        let left = m.pushers();
        assert_eq!(left.len(), 2, "a leaver is not served by the next fan-out");
        assert!(!same(&joined, &left));
        m.insert(2, q());
        assert!(
            !same(&left, &m.pushers()),
            "a member's new queue replaces its handle"
        );
    }
}
