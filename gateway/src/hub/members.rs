//! A room's local members.

use super::ConnId;
use crate::outbound::OutboundQueue;
use std::collections::HashMap;

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
    #[allow(clippy::box_collection)] // on purpose: see above
    Many(Box<HashMap<ConnId, OutboundQueue>>),
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
                    *self = Members::Many(Box::new(HashMap::from([(id, q), (conn, queue)])));
                }
            }
            Members::Many(map) => {
                map.insert(conn, queue);
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
            Members::Many(map) => {
                let removed = map.remove(&conn)?;
                if map.len() <= 1 {
                    let last = map.drain().next();
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
            Members::Many(map) => (None, Some(map.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
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
        assert!(matches!(&m, Members::Many(map) if map.len() == 2));
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
        assert!(matches!(&m, Members::Many(map) if map.len() == 2));
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
}
