//! The sessions of ended connections this node stored for a resume, per user, so that one
//! user cannot fill the store with them (`sessions.keptPerUser`).
//!
//! Every connection's end stores its session for `sessions.resumeTtl` under a token of its
//! own. Without a bound, a user reconnecting as fast as `admission.perUserRate` lets it
//! kept rate × TTL of them per pod (1,520 at the defaults; about 26 MB of Redis with 100
//! long room names each). The node remembers the ended sessions it stored, newest last,
//! and past the user's allowance hands back the oldest for its owner to drop from the
//! store.
//!
//! Pure bookkeeping, no clock and no store: the caller passes the time and drops what it
//! is handed. Every operation is O(1) amortised (a `taken` scans one user's list, at most
//! the allowance long), and memory is bounded by [`MAX_TRACKED`] sessions: beyond it the
//! oldest is forgotten early (its stored session then simply expires).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Most ended sessions a node keeps track of (about 60 bytes each).
pub const MAX_TRACKED: usize = 100_000;

/// One user's ended sessions, oldest first.
struct Kept<T> {
    token: T,
    seq: u64,
}

/// Ended sessions by user, and the order they ended in (for expiry).
pub struct EndedSessions<T> {
    per_user: usize,
    ttl_ms: u64,
    max_tracked: usize,
    users: HashMap<Arc<str>, VecDeque<Kept<T>>>,
    /// Every tracked session in the order it was recorded: (user, seq, recorded at, ms).
    order: VecDeque<(Arc<str>, u64, u64)>,
    next_seq: u64,
}

impl<T: PartialEq> EndedSessions<T> {
    /// At most `per_user` ended sessions of a user (0: no limit), each remembered for
    /// `ttl_ms` (the store's own expiry of a session).
    pub fn new(per_user: usize, ttl_ms: u64) -> Self {
        Self::with_max(per_user, ttl_ms, MAX_TRACKED)
    }

    fn with_max(per_user: usize, ttl_ms: u64, max_tracked: usize) -> Self {
        EndedSessions {
            per_user,
            ttl_ms,
            max_tracked: max_tracked.max(1),
            users: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// `user`'s session `token` was stored as its connection ended, at `now_ms`. Returns
    /// the user's oldest ended session when that makes one more than the allowance: the
    /// caller drops it from the store.
    pub fn record(&mut self, user: &str, token: T, now_ms: u64) -> Option<T> {
        if self.per_user == 0 {
            return None;
        }
        self.expire(now_ms);
        while self.order.len() >= self.max_tracked {
            self.forget_oldest();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let user: Arc<str> = match self.users.get_key_value(user) {
            Some((name, _)) => name.clone(),
            None => user.into(),
        };
        let list = self.users.entry(user.clone()).or_default();
        list.push_back(Kept { token, seq });
        let over = if list.len() > self.per_user {
            list.pop_front().map(|k| k.token)
        } else {
            None
        };
        self.order.push_back((user, seq, now_ms));
        over
    }

    /// `user`'s session `token` was resumed (taken from the store): it no longer counts.
    pub fn taken(&mut self, user: &str, token: &T) {
        if let Some(list) = self.users.get_mut(user) {
            list.retain(|k| k.token != *token);
            if list.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Forgets what the store has expired by `now_ms`.
    fn expire(&mut self, now_ms: u64) {
        while self
            .order
            .front()
            .is_some_and(|&(_, _, at)| at.saturating_add(self.ttl_ms) <= now_ms)
        {
            self.forget_oldest();
        }
    }

    /// Forgets the oldest tracked session. Its user's list holds it at the front unless it
    /// was already dropped or taken (then the front is a later one, and stays).
    fn forget_oldest(&mut self) {
        let Some((user, seq, _)) = self.order.pop_front() else {
            return;
        };
        if let Some(list) = self.users.get_mut(&user) {
            if list.front().is_some_and(|k| k.seq == seq) {
                list.pop_front();
            }
            if list.is_empty() {
                self.users.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 300_000;

    #[test]
    fn past_the_allowance_the_users_oldest_is_handed_back() {
        let mut e = EndedSessions::new(2, TTL);
        assert_eq!(e.record("mallory", 1, 0), None);
        assert_eq!(e.record("alice", 10, 1), None);
        assert_eq!(e.record("mallory", 2, 2), None);
        assert_eq!(e.record("mallory", 3, 3), Some(1));
        assert_eq!(e.record("mallory", 4, 4), Some(2));
        // Another user's sessions are not touched, nor counted.
        assert_eq!(e.record("alice", 11, 5), None);
    }

    #[test]
    fn a_resumed_session_no_longer_counts() {
        let mut e = EndedSessions::new(2, TTL);
        e.record("bob", 1, 0);
        e.record("bob", 2, 1);
        e.taken("bob", &1);
        assert_eq!(
            e.record("bob", 3, 2),
            None,
            "1 was resumed: 2 and 3 are kept"
        );
        assert_eq!(e.record("bob", 4, 3), Some(2));
        // Taking a token the user does not have changes nothing.
        e.taken("bob", &99);
        e.taken("nobody", &3);
        assert_eq!(e.record("bob", 5, 4), Some(3));
    }

    #[test]
    fn sessions_the_store_expired_are_forgotten() {
        let mut e = EndedSessions::new(2, TTL);
        e.record("carol", 1, 0);
        e.record("carol", 2, 10);
        assert_eq!(e.record("carol", 3, TTL), None, "1 expired at TTL");
        assert_eq!(e.order.len(), 2);
        assert_eq!(e.record("carol", 4, TTL + 5), Some(2));
        // Long after, nothing is left of anyone.
        e.record("dave", 1, 10 * TTL);
        assert_eq!(e.order.len(), 1);
        assert_eq!(e.users.len(), 1);
    }

    #[test]
    fn memory_is_bounded_by_the_tracked_sessions() {
        let mut e = EndedSessions::with_max(3, TTL, 4);
        for i in 0..1000u64 {
            assert_eq!(e.record(&format!("u{i}"), i, i), None);
            assert!(e.order.len() <= 4);
            assert!(e.users.len() <= 4);
        }
        // Forgotten early, a session no longer counts (nor is it handed back: the store
        // expires it).
        let mut e = EndedSessions::with_max(2, TTL, 3);
        e.record("mallory", 0, 0);
        e.record("mallory", 1, 0);
        e.record("alice", 9, 0);
        assert_eq!(
            e.record("mallory", 2, 0),
            None,
            "0 was forgotten to make room"
        );
        assert_eq!(e.users["mallory"].len(), 2);
        assert_eq!(e.record("mallory", 3, 0), None);
        assert_eq!(e.order.len(), 3);
    }

    #[test]
    fn an_early_forgotten_order_entry_leaves_later_sessions_alone() {
        // 1 is taken, so the user's front is 2 when 1's order entry expires: 2 stays.
        let mut e = EndedSessions::new(3, TTL);
        e.record("erin", 1, 0);
        e.record("erin", 2, 5);
        e.taken("erin", &1);
        e.record("erin", 3, TTL);
        assert_eq!(e.users["erin"].len(), 2, "2 and 3");
        assert_eq!(e.record("erin", 4, TTL), None);
        assert_eq!(e.record("erin", 5, TTL), Some(2));
    }

    #[test]
    fn no_allowance_tracks_nothing() {
        let mut e = EndedSessions::new(0, TTL);
        for t in 0..10 {
            assert_eq!(e.record("frank", t, 0), None);
        }
        assert_eq!(e.order.len(), 0);
    }
}
