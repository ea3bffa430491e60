//! `limits.newRoomsPerHour`: how many rooms and inboxes one user's sends may start (a
//! room's first message creates keys kept for days: docs/operations.md, "Redis memory").
//!
//! A token bucket per user, refilling at the hourly rate. Each node keeps its own, read on
//! every send to a room that keeps history without a round trip. With the Redis engine
//! the bucket that counts is one per user for the whole cluster, kept in Redis, and the
//! node's follows it: each room the user starts takes the cluster's token, and the node's
//! bucket is lowered to what the cluster's has left (never raised: the node's sends still
//! in flight hold tokens the cluster has not counted yet). Both refill at the same rate,
//! so the node refuses only what the cluster would once its sends in flight are counted,
//! and a node that has not yet seen another's starts lets one more room through (what its
//! own bucket holds, when the user's sends on it race), whose debt the user then waits
//! out. Without it a user's budget grew with the number of pods their connections reached.
//!
//! A send that may start a room holds one token while it runs ([`RoomStarts::reserve`]):
//! whether it started one is known only once it is published, and a check that took
//! nothing let every send in flight through, each of a user's connections (100 a pod)
//! starting a room in the same moment. The token goes back when the send started none.

use crate::engine::Engine;
use crate::ratelimit::KeyedBuckets;
use std::sync::Mutex;
use std::time::Instant;

/// The node's view of each user's room starts.
pub struct RoomStarts {
    per_hour: u32,
    buckets: Mutex<KeyedBuckets<String>>,
}

impl RoomStarts {
    /// `per_hour` starts a user (0: unlimited); at most `max_keys` users tracked, past
    /// that a new user is not limited on this node until buckets refill (the cluster's
    /// bucket still counts their starts, but only a tracked user's refusals follow it).
    pub fn new(per_hour: u32, max_keys: usize) -> Self {
        let rate = f64::from(per_hour) / 3600.0;
        RoomStarts {
            per_hour,
            buckets: Mutex::new(KeyedBuckets::new(rate, per_hour, max_keys)),
        }
    }

    /// The limit (`limits.newRoomsPerHour`).
    pub fn per_hour(&self) -> u32 {
        self.per_hour
    }

    /// One of `user`'s starts, held for a send that may start a room or inbox; `None`
    /// when they have none left (unlimited: always one, holding nothing).
    pub fn reserve<'a>(&'a self, user: &'a str) -> Option<Reserved<'a>> {
        let held = self.per_hour > 0;
        if held && !self.lock().take_at(user, Instant::now()) {
            return None;
        }
        Some(Reserved {
            starts: self,
            user,
            held,
        })
    }

    /// A send of `user` started a room or inbox: the start `reserved` for it (or, for a
    /// send let through because the room had messages, one taken now) on this node and,
    /// through the engine, one in the cluster's bucket, whose count the node's then
    /// follows (less what its sends in flight hold). When the engine cannot answer the
    /// node's own count stands (the engine logs why).
    pub async fn started(&self, engine: &dyn Engine, user: &str, reserved: Option<Reserved<'_>>) {
        if self.per_hour == 0 {
            return;
        }
        match reserved {
            Some(mut r) => r.held = false,
            None => _ = self.lock().take_at(user, Instant::now()),
        }
        let rate = f64::from(self.per_hour) / 3600.0;
        if let Ok(Some(left)) = engine.start_room(user, rate, self.per_hour).await {
            self.lock().lower_to_at(user, left, Instant::now());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyedBuckets<String>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A start held by a send in flight; given back when dropped unless the send started a
/// room ([`RoomStarts::started`]).
pub struct Reserved<'a> {
    starts: &'a RoomStarts,
    user: &'a str,
    held: bool,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.held {
            self.starts.lock().give_back_at(self.user, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::memory::MemoryEngine;
    use crate::hub::Hub;
    use std::sync::Arc;

    #[tokio::test]
    async fn sends_in_flight_hold_their_starts_and_give_back_what_they_did_not_start() {
        let starts = RoomStarts::new(3, 100);
        let engine = MemoryEngine::new(Arc::new(Hub::default()), &Default::default());
        // Three sends in flight at once (each may start a room): a fourth waits.
        let held: Vec<_> = (0..3).filter_map(|_| starts.reserve("ann")).collect();
        assert_eq!(held.len(), 3);
        assert!(starts.reserve("ann").is_none(), "every start is held");
        assert!(
            starts.reserve("bob").is_some(),
            "another user's are their own"
        );
        let mut held = held.into_iter();
        // One started a room, one went to a room with messages, one failed.
        let first = held.next();
        starts.started(&engine, "ann", first).await;
        drop(held.next());
        assert!(
            starts.reserve("ann").is_some(),
            "a start not made is given back"
        );
        drop(held);
        let again: Vec<_> = (0..3).filter_map(|_| starts.reserve("ann")).collect();
        assert_eq!(again.len(), 2, "the room started keeps its start");
        drop(again);
        // A send let through on a room with messages that started one all the same.
        starts.started(&engine, "ann", None).await;
        let last: Vec<_> = (0..3).filter_map(|_| starts.reserve("ann")).collect();
        assert_eq!(last.len(), 1);
    }

    #[test]
    fn unlimited_holds_nothing() {
        let starts = RoomStarts::new(0, 100);
        let held: Vec<_> = (0..1000).filter_map(|_| starts.reserve("ann")).collect();
        assert_eq!(held.len(), 1000);
    }
}
