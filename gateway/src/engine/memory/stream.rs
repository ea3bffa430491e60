//! One room's (or inbox's) stream of messages in the memory engine.

use super::budget::Budget;
use crate::config::RetentionConfig;
use crate::engine::{cut_page, new_epoch, Envelope, HistoryPage, HistoryQuery};
use crate::protocol::StreamPosition;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// A stream's DM-quota map is pruned once it holds more than this many senders per
/// retained message: past one, some have none left (a busy inbox kept one per distinct
/// sender until its epoch ended); at two, a prune (a walk of the map) comes after at least
/// as many sends or trims as the map keeps entries: amortised constant work per send.
const SENDERS_PER_RETAINED: usize = 2;

/// One room's (or inbox's) stream of messages.
pub(super) struct Stream {
    pub(super) epoch: Arc<str>,
    pub(super) top: u64,
    /// (append time in Unix ms, message), oldest first; changed only through
    /// [`push`](Self::push), [`pop`](Self::pop) and [`clear`](Self::clear), which keep
    /// the budget's total.
    msgs: VecDeque<(u64, Arc<Envelope>)>,
    budget: Arc<Budget>,
    /// "from\0msg_id" -> (seq, its epoch, remembered until); changed only through
    /// [`remember_id`](Self::remember_id) and the `forget_*` methods, which keep the
    /// budget's total (an id costs [`Budget::id_cost`] until it is forgotten).
    dedup: HashMap<Arc<str>, (u64, Arc<str>, Instant)>,
    /// The ids in the order they were remembered (one key shared with the map).
    dedup_order: VecDeque<(Instant, Arc<str>)>,
    /// Inboxes with a DM quota: sender -> seqs of their messages (those below the first
    /// retained seq are dropped lazily: on the sender's next send, or in
    /// [`forget_gone_senders`](Self::forget_gone_senders) as [`trim`](Self::trim) goes).
    pub(super) by_sender: HashMap<String, VecDeque<u64>>,
}

impl Stream {
    /// A stream with no message: of a new room, or (`known`) of a room whose stream was
    /// pruned once its messages aged out, which keeps its epoch and numbers on.
    pub(super) fn new(budget: Arc<Budget>, known: Option<StreamPosition>) -> Self {
        let (epoch, top) = match known {
            Some(at) => (at.epoch, at.seq),
            None => (new_epoch().into(), 0),
        };
        Stream {
            epoch,
            top,
            msgs: VecDeque::new(),
            budget,
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            by_sender: HashMap::new(),
        }
    }

    /// Whether `from` has fewer than `quota` retained messages here (0: no quota).
    pub(super) fn under_quota(&mut self, from: &str, quota: u32) -> bool {
        if quota == 0 {
            return true;
        }
        let first = self.first();
        let Some(seqs) = self.by_sender.get_mut(from) else {
            return true;
        };
        drop_below(seqs, first);
        seqs.len() < quota as usize
    }

    /// The epoch rule: a new epoch, numbering from 1 again; the old epoch's messages go.
    pub(super) fn restart_epoch(&mut self) {
        self.epoch = new_epoch().into();
        self.top = 0;
        self.clear();
        self.by_sender.clear();
    }

    /// Appends a message (appended at `ts`, Unix ms).
    pub(super) fn push(&mut self, ts: u64, env: Arc<Envelope>) {
        self.budget.add(Budget::cost(&env));
        self.msgs.push_back((ts, env));
    }

    /// Drops the oldest message, if any.
    pub(super) fn pop(&mut self) -> bool {
        let Some((_, env)) = self.msgs.pop_front() else {
            return false;
        };
        self.budget.sub(Budget::cost(&env));
        true
    }

    fn clear(&mut self) {
        while self.pop() {}
    }

    /// Drops the messages after `keep` (tests: a store that lost its newest writes).
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn rewind(&mut self, keep: u64) {
        while self.msgs.back().is_some_and(|(_, m)| m.seq > keep) {
            if let Some((_, env)) = self.msgs.pop_back() {
                self.budget.sub(Budget::cost(&env));
            }
        }
        self.top = self.top.min(keep);
    }

    /// Whether no message is left.
    pub(super) fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// When the oldest message was appended (Unix ms), if there is one.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.msgs.front().map(|(ts, _)| *ts)
    }

    pub(super) fn trim(&mut self, retention: &RetentionConfig, now: u64) {
        let max_age = retention.max_age.as_millis() as u64;
        while self.msgs.len() > retention.max_messages
            || self
                .msgs
                .front()
                .is_some_and(|(ts, _)| now.saturating_sub(*ts) > max_age)
        {
            self.pop();
        }
        if self.by_sender.len() > SENDERS_PER_RETAINED * self.msgs.len() {
            self.forget_gone_senders();
        }
    }

    /// Drops the DM-quota seqs of messages no longer retained, and senders left with none.
    fn forget_gone_senders(&mut self) {
        let first = self.first();
        self.by_sender.retain(|_, seqs| {
            drop_below(seqs, first);
            !seqs.is_empty()
        });
    }

    /// The seq (and its epoch) stored under a msg id (`"from\0msg_id"`), if remembered.
    pub(super) fn stored_id(&self, key: &str) -> Option<(u64, &Arc<str>)> {
        self.dedup.get(key).map(|(seq, epoch, _)| (*seq, epoch))
    }

    /// Remembers a msg id until `until`: a repeat is answered with `seq` meanwhile.
    pub(super) fn remember_id(&mut self, key: &str, seq: u64, until: Instant) {
        let key: Arc<str> = key.into();
        let epoch = self.epoch.clone();
        if self
            .dedup
            .insert(key.clone(), (seq, epoch, until))
            .is_none()
        {
            self.budget.add(Budget::id_cost(&key));
        }
        self.dedup_order.push_back((until, key));
    }

    /// Whether any msg id is remembered.
    pub(super) fn remembers_ids(&self) -> bool {
        !self.dedup.is_empty()
    }

    /// When the oldest remembered msg id expires, if there is one.
    pub(super) fn oldest_id(&self) -> Option<Instant> {
        self.dedup_order.front().map(|(until, _)| *until)
    }

    pub(super) fn forget_expired_ids(&mut self, now: Instant) {
        while self.oldest_id().is_some_and(|until| until <= now) {
            self.forget_oldest_id();
        }
    }

    /// Forgets the oldest msg id (expired, or evicted by the budget). False if none is left.
    pub(super) fn forget_oldest_id(&mut self) -> bool {
        let Some((until, key)) = self.dedup_order.pop_front() else {
            return false;
        };
        // A key remembered twice (stored again in a new epoch) has a newer entry further
        // on, whose `until` the map holds: the key goes at that entry's turn.
        if self.dedup.get(&key).is_some_and(|(_, _, u)| *u == until) {
            self.dedup.remove(&key);
            self.budget.sub(Budget::id_cost(&key));
        }
        true
    }

    pub(super) fn first(&self) -> u64 {
        self.msgs.front().map_or(self.top + 1, |(_, m)| m.seq)
    }

    pub(super) fn page(&self, q: HistoryQuery) -> HistoryPage {
        let in_range =
            |seq: u64| q.since.is_none_or(|since| seq > since) && q.before.is_none_or(|b| seq < b);
        let all = self.msgs.iter().map(|(_, m)| m);
        let (messages, more) = if q.since.is_some() {
            cut_page(all.filter(|m| in_range(m.seq)), q.limit, q.max_bytes)
        } else {
            let (mut newest, more) =
                cut_page(all.rev().filter(|m| in_range(m.seq)), q.limit, q.max_bytes);
            newest.reverse();
            (newest, more)
        };
        HistoryPage {
            epoch: self.epoch.clone(),
            top: self.top,
            first: self.first(),
            messages,
            more,
        }
    }
}

impl Drop for Stream {
    /// A stream dropped (pruned, or its engine gone) gives its messages' and msg ids'
    /// bytes back.
    fn drop(&mut self) {
        self.clear();
        for key in self.dedup.keys() {
            self.budget.sub(Budget::id_cost(key));
        }
    }
}

/// Drops a sender's seqs of messages already trimmed (below `first`, the oldest kept).
fn drop_below(seqs: &mut VecDeque<u64>, first: u64) {
    while seqs.front().is_some_and(|s| *s < first) {
        seqs.pop_front();
    }
}
