//! Users' inbox cursors, forgotten as the Redis engine's are: 2 × the inbox's `maxAge`
//! after the last ack. One is stored for every user who acknowledges anything; kept for the
//! process's life they grew with every user the pod ever saw.

use crate::protocol::StreamPosition;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Expired cursors are swept at most this often: a sweep walks every cursor, and acks come
/// with the inbox messages clients read. Entries are only added by an ack, and every ack
/// at least this long after the last sweep sweeps, so the map holds at most the cursors
/// acknowledged within their TTL plus this.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Each user's inbox cursor and when it is forgotten (`None`: a TTL too long for the
/// clock to represent, never).
#[derive(Default)]
pub(super) struct InboxCursors {
    map: HashMap<String, (StreamPosition, Option<Instant>)>,
    swept: Option<Instant>,
}

fn live(until: Option<Instant>, now: Instant) -> bool {
    until.is_none_or(|u| u > now)
}

impl InboxCursors {
    /// `user`'s cursor; an expired one is none (as a Redis key past its TTL), swept or not.
    pub(super) fn get(&self, user: &str, now: Instant) -> Option<StreamPosition> {
        self.map
            .get(user)
            .filter(|(_, until)| live(*until, now))
            .map(|(at, _)| at.clone())
    }

    /// Advances `user`'s cursor to `at` (never back within an epoch; another epoch replaces
    /// it) and keeps it for `ttl` from `now`, as the Redis script refreshes its key's TTL.
    pub(super) fn ack(&mut self, user: &str, at: &StreamPosition, ttl: Duration, now: Instant) {
        self.sweep(now);
        let until = now.checked_add(ttl);
        match self.map.get_mut(user).filter(|(_, u)| live(*u, now)) {
            Some((cur, expiry)) => {
                if cur.epoch == at.epoch {
                    cur.seq = cur.seq.max(at.seq);
                } else {
                    *cur = at.clone();
                }
                *expiry = until;
            }
            // Seq 0 acknowledges nothing, and a connection's inbox replay treats a cursor
            // at seq 0 as no cursor (it starts from what is retained either way): storing
            // it only cost an entry per user who resumed with an empty inbox.
            None if at.seq == 0 => {
                self.map.remove(user);
            }
            None => {
                self.map.insert(user.to_string(), (at.clone(), until));
            }
        }
    }

    /// Drops expired cursors, at most every [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.map.retain(|_, (_, until)| live(*until, now));
        self.swept = Some(now);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub(super) fn expiry(&self, user: &str) -> Option<Option<Instant>> {
        self.map.get(user).map(|(_, until)| *until)
    }
}
