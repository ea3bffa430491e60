//! Presence batching (issue 23, join storms): a room's presence changes are collected on
//! each node for `limits.presenceBatch` and pushed to its local members as one `presence`
//! frame, so N members joining one room cost each member about one frame per window
//! instead of N, and the room O(N) frames instead of O(N²).
//!
//! This is the pure part: what a window holds and what its frame says. The hub owns the
//! pending batches and the timer that flushes them (`Hub::presence`).

use std::collections::HashMap;

/// Most distinct users in one batch; a full batch is flushed at once. Keeps a frame small
/// next to the outbound queue (`limits.outboundQueueBytes`, 1 MiB by default).
pub const MAX_USERS: usize = 256;

/// Most bytes of user ids (with their JSON quotes and comma) in one batch; a full batch
/// is flushed at once.
pub const MAX_BYTES: usize = 16 * 1024;

/// The presence changes of one room within one window. Each user is in it once, with the
/// last change: a user who joins and leaves within the window is reported as left (and
/// one who leaves and joins again as joined), which is the state the window ends in.
#[derive(Debug, Default)]
pub struct Batch {
    /// Users in the order of their first change in the window.
    order: Vec<String>,
    /// User -> joined (true) or left (false): the last change.
    last: HashMap<String, bool>,
    bytes: usize,
}

/// What a batch says: users who joined and users who left, each user in one list only.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Users whose first connection joined (and who were still in at the end).
    pub joined: Vec<String>,
    /// Users whose last connection left (and who were still out at the end).
    pub left: Vec<String>,
}

impl Batch {
    /// Records that `user` joined (`true`) or left; true when the batch is now full and
    /// should be flushed before the window ends.
    pub fn add(&mut self, user: &str, joined: bool) -> bool {
        match self.last.get_mut(user) {
            Some(state) => *state = joined,
            None => {
                self.last.insert(user.to_string(), joined);
                self.order.push(user.to_string());
                // `"user",` in the frame (ids are plain: no escapes to count).
                self.bytes += user.len() + 3;
            }
        }
        self.is_full()
    }

    /// Whether the batch reached [`MAX_USERS`] or [`MAX_BYTES`].
    pub fn is_full(&self) -> bool {
        self.order.len() >= MAX_USERS || self.bytes >= MAX_BYTES
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The net changes, in the order of each user's first change.
    pub fn into_changes(mut self) -> Changes {
        let mut out = Changes::default();
        for user in self.order {
            match self.last.remove(&user) {
                Some(true) => out.joined.push(user),
                Some(false) => out.left.push(user),
                None => {} // unreachable: every ordered user has a state
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(events: &[(&str, bool)]) -> Changes {
        let mut b = Batch::default();
        for (user, joined) in events {
            b.add(user, *joined);
        }
        b.into_changes()
    }

    #[test]
    fn joins_and_leaves_keep_first_change_order() {
        let c = changes(&[("a", true), ("b", true), ("c", false), ("d", true)]);
        assert_eq!(c.joined, ["a", "b", "d"]);
        assert_eq!(c.left, ["c"]);
    }

    #[test]
    fn the_last_change_of_a_user_wins() {
        let c = changes(&[("a", true), ("b", false), ("a", false), ("b", true)]);
        assert_eq!(c.joined, ["b"], "left and came back: in");
        assert_eq!(c.left, ["a"], "came and went: out");
        let c = changes(&[("a", true), ("a", false), ("a", true)]);
        assert_eq!(
            c,
            Changes {
                joined: vec!["a".into()],
                left: vec![]
            }
        );
    }

    #[test]
    fn an_empty_batch_says_nothing() {
        let b = Batch::default();
        assert!(b.is_empty());
        assert!(!b.is_full());
        assert_eq!(b.into_changes(), Changes::default());
    }

    #[test]
    fn a_batch_is_full_at_the_user_limit() {
        let mut b = Batch::default();
        for i in 0..MAX_USERS - 1 {
            assert!(!b.add(&format!("u{i}"), true), "not full at {i}");
        }
        // Repeats do not grow it.
        assert!(!b.add("u0", false));
        assert!(b.add("last", true), "full at MAX_USERS");
        let c = b.into_changes();
        assert_eq!(c.joined.len() + c.left.len(), MAX_USERS);
    }

    #[test]
    fn a_batch_is_full_at_the_byte_limit() {
        let long = "x".repeat(MAX_BYTES / 4);
        let mut b = Batch::default();
        let full: Vec<bool> = (0..4).map(|i| b.add(&format!("{i}{long}"), true)).collect();
        assert_eq!(full, [false, false, false, true]);
    }
}
