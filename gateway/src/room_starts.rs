//! `limits.newRoomsPerHour`: how many rooms and inboxes one user's sends may start (a
//! room's first message creates keys kept for days: docs/operations.md, "Redis memory").
//!
//! A token bucket per user, refilling at the hourly rate. Each node keeps its own, read on
//! every send to a room that keeps history without a round trip. With the Redis engine
//! the bucket that counts is one per user for the whole cluster, kept in Redis, and the
//! node's follows it: each room the user starts takes the cluster's token, and the node's
//! bucket is set to what the cluster's has left. Both refill at the same rate and only
//! other nodes' starts lower the cluster's, so a node's bucket never holds fewer tokens
//! than the cluster's: it refuses only what the cluster would, and a node that has not yet
//! seen another's starts lets one more room through, whose debt the user then waits out.
//! Without it a user's budget grew with the number of pods their connections reached.

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
    /// that a new user is not limited on this node (the cluster's bucket still counts).
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

    /// Whether `user` may start another room or inbox now.
    pub fn allows(&self, user: &str) -> bool {
        self.lock().allows_at(user, Instant::now())
    }

    /// A send of `user` started a room or inbox: one of their starts, on this node and,
    /// through the engine, in the cluster's bucket, whose count the node's then takes.
    /// When the engine cannot answer the node's own count stands (the engine logs why).
    pub async fn started(&self, engine: &dyn Engine, user: &str) {
        if self.per_hour == 0 {
            return;
        }
        self.lock().take_at(user, Instant::now());
        let rate = f64::from(self.per_hour) / 3600.0;
        if let Ok(Some(left)) = engine.start_room(user, rate, self.per_hour).await {
            self.lock().set_at(user, left, Instant::now());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyedBuckets<String>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }
}
