//! The joiners' fast path: the rooms whose subscription Redis has confirmed. A joiner that
//! finds its room here returns at once instead of asking the subscriber task (a second
//! member of a room, or one joining within the [subscription linger](super::sub_linger)).
//! Inboxes are not here: a user's second device asks the subscriber, which answers at once.
//!
//! A joiner registers in the hub first and looks here second; the subscriber, dropping a
//! room its last member left, takes it off the fast path first and asks the hub second
//! ([`FastPath::close_unless`]). Either the subscriber sees the joiner, or the joiner
//! finds the room gone and asks for a subscription (queued behind the drop). The other
//! order left a window: a joiner registering just after the hub was asked could still
//! take the fast path to a room about to be unsubscribed, and get no messages.

use super::shared::lock;
use std::collections::HashSet;
use std::sync::Mutex;

#[derive(Default)]
pub(super) struct FastPath(Mutex<HashSet<String>>);

impl FastPath {
    pub(super) fn contains(&self, room: &str) -> bool {
        lock(&self.0).contains(room)
    }

    pub(super) fn open(&self, room: &str) {
        lock(&self.0).insert(room.to_string());
    }

    /// Takes `room` off the fast path unless `in_use` says a local member holds it; asked
    /// while the room is off, so a joiner it misses cannot find the room here either. True
    /// when the room is closed; false when it stays as it was.
    pub(super) fn close_unless(&self, room: &str, in_use: impl FnOnce(&str) -> bool) -> bool {
        let was_open = lock(&self.0).remove(room);
        if !in_use(room) {
            return true;
        }
        if was_open {
            self.open(room);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_is_off_the_fast_path_while_the_hub_is_asked() {
        let path = FastPath::default();
        path.open("room");
        // `in_use` runs where a joiner could register just after the hub was asked: such
        // a joiner must not find the room open.
        let mut open_while_asked = None;
        let closed = path.close_unless("room", |r| {
            open_while_asked = Some(path.contains(r));
            false
        });
        assert_eq!(open_while_asked, Some(false));
        assert!(closed);
        assert!(!path.contains("room"));
    }

    #[test]
    fn a_room_in_use_stays_as_it_was() {
        let path = FastPath::default();
        path.open("room");
        assert!(!path.close_unless("room", |_| true));
        assert!(path.contains("room"));
        // Not opened by the check: a room still waiting for its subscription stays closed.
        assert!(!path.close_unless("other", |_| true));
        assert!(!path.contains("other"));
    }
}
