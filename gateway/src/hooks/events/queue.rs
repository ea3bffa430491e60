//! The notifier's queue, bounded by count (`hooks.events.queueSize`) and by the bytes its
//! events hold ([`MAX_QUEUED_BYTES`]). The byte count is private to this module and only
//! [`Queue::push`] and [`Queue::pop_front`] change it, each by the size recorded with the
//! event, so it cannot drift from what is queued however events leave (posted, dropped, or
//! the queue itself dropped at shutdown).

use super::Event;
use std::collections::VecDeque;
use std::sync::Arc;

/// Most bytes the queued events may hold, a fixed bound rather than a setting: each
/// `message` event holds a copy of its body (up to `limits.maxFrameBytes`, 64 KiB by
/// default), so with only `queueSize` (10,000) a slow backend and large bodies (or one API
/// broadcast to 1,000 rooms) could make the queue hold about 640 MB. 16 MiB still holds the
/// default 10,000 events when they average up to about 1.6 KiB (a chat line, its ids and
/// the event's fixed size come to a few hundred bytes), so the count bound is the one that
/// binds for ordinary traffic, while about 250 bodies of 64 KiB reach it. Past it the
/// oldest events are dropped, as past `queueSize`.
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// One queued event.
struct Queued {
    /// Grows by one per queued event: a posted batch is removed by id, since the queue may
    /// have dropped some of it while it was out.
    id: u64,
    /// Shared with the batch being posted rather than copied (a batch of 64 KiB bodies is
    /// megabytes).
    event: Arc<Event>,
    /// [`held_bytes`] of `event`, recorded once so that removal takes away exactly what was
    /// added.
    bytes: usize,
}

/// About what a queued event holds in memory: its fixed size and the bytes of its strings
/// and body (which dominate for a `message`).
fn held_bytes(event: &Event) -> usize {
    let heap = match event {
        Event::Message {
            room,
            epoch,
            msg_id,
            from,
            body,
            ..
        } => room.len() + epoch.len() + msg_id.len() + from.len() + body.get().len(),
        Event::Connected {
            user,
            session,
            node,
            ..
        } => user.len() + session.len() + node.len(),
        Event::Disconnected {
            user,
            session,
            node,
            reason,
            ..
        } => user.len() + session.len() + node.len() + reason.len(),
    };
    std::mem::size_of::<Queued>() + std::mem::size_of::<Event>() + heap
}

/// Events oldest first, within `max_events` and `max_bytes`.
pub(super) struct Queue {
    next_id: u64,
    events: VecDeque<Queued>,
    /// Sum of the queued events' `bytes`.
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl Queue {
    pub(super) fn new(max_events: usize, max_bytes: usize) -> Queue {
        Queue {
            next_id: 0,
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
        }
    }

    /// Appends `event`, first dropping the oldest events until it fits both bounds; returns
    /// how many events were dropped. An event larger than the whole byte bound could never
    /// fit: it is the one dropped, and the queue is left as it was.
    pub(super) fn push(&mut self, event: Event) -> u64 {
        let bytes = held_bytes(&event);
        if bytes > self.max_bytes {
            return 1;
        }
        let mut dropped = 0;
        while self.events.len() >= self.max_events || self.bytes + bytes > self.max_bytes {
            if self.pop_front().is_none() {
                break;
            }
            dropped += 1;
        }
        self.next_id += 1;
        self.bytes += bytes;
        self.events.push_back(Queued {
            id: self.next_id,
            event: Arc::new(event),
            bytes,
        });
        dropped
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let q = self.events.pop_front()?;
        self.bytes -= q.bytes;
        Some(q)
    }

    /// Up to `n` of the oldest events and the id of the last (0 when empty).
    pub(super) fn front(&self, n: usize) -> (u64, Vec<Arc<Event>>) {
        let taken: Vec<&Queued> = self.events.iter().take(n).collect();
        let last = taken.last().map_or(0, |q| q.id);
        (last, taken.into_iter().map(|q| q.event.clone()).collect())
    }

    /// Removes the events up to id `last` (a batch the backend took).
    pub(super) fn remove_through(&mut self, last: u64) {
        while self.events.front().is_some_and(|q| q.id <= last) {
            self.pop_front();
        }
    }

    /// Bytes the queued events hold.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::tests::message;

    /// The byte count recomputed from what is queued.
    fn recount(q: &Queue) -> usize {
        q.events.iter().map(|e| held_bytes(&e.event)).sum()
    }

    /// Large bodies fill the byte bound long before the count bound: the queue never holds
    /// more than the bound, drops the oldest, and once drained (and refilled past the bound
    /// again) still takes as many small events as its count allows.
    #[test]
    fn large_bodies_stop_at_the_byte_bound_and_small_events_still_fit() {
        let mut q = Queue::new(10_000, MAX_QUEUED_BYTES);
        let large = held_bytes(&message(64 * 1024));
        let mut dropped = 0;
        for _ in 0..1_000 {
            dropped += q.push(message(64 * 1024));
            assert!(q.bytes() <= MAX_QUEUED_BYTES, "{} queued", q.bytes());
            assert_eq!(q.bytes(), recount(&q));
        }
        let fit = MAX_QUEUED_BYTES / large;
        assert_eq!(q.len(), fit);
        assert_eq!(
            dropped as usize,
            1_000 - fit,
            "each one over the bound drops one"
        );

        // The backend takes two batches; what it took leaves the count.
        for _ in 0..2 {
            let (last, batch) = q.front(100);
            assert_eq!(batch.len(), 100);
            q.remove_through(last);
            assert_eq!(q.bytes(), recount(&q));
        }
        assert_eq!(q.len(), fit - 200);

        // Small events replace the large ones, oldest first, until the count bound alone
        // binds: all 10,000 fit, and no large one is left.
        let mut dropped = 0;
        for _ in 0..10_000 {
            dropped += q.push(message(100));
            assert!(q.bytes() <= MAX_QUEUED_BYTES);
        }
        assert_eq!(q.len(), 10_000);
        assert_eq!(
            dropped as usize,
            fit - 200,
            "only the large ones were dropped"
        );
        assert_eq!(q.bytes(), recount(&q));
        assert_eq!(q.bytes(), 10_000 * held_bytes(&message(100)));

        let (last, _) = q.front(usize::MAX);
        q.remove_through(last);
        assert_eq!(
            (q.len(), q.bytes()),
            (0, 0),
            "nothing left over once drained"
        );
    }

    /// An event larger than the whole bound is dropped itself rather than emptying the
    /// queue for nothing.
    #[test]
    fn an_event_larger_than_the_bound_is_dropped_alone() {
        let mut q = Queue::new(10, 4096);
        assert_eq!(q.push(message(100)), 0);
        let before = q.bytes();
        assert_eq!(q.push(message(8192)), 1);
        assert_eq!((q.len(), q.bytes()), (1, before));
    }

    /// The count bound still drops the oldest, one per event past it.
    #[test]
    fn the_count_bound_drops_the_oldest() {
        let mut q = Queue::new(3, MAX_QUEUED_BYTES);
        let dropped: u64 = (0..5).map(|_| q.push(message(10))).sum();
        assert_eq!(dropped, 2);
        let (last, batch) = q.front(10);
        assert_eq!((batch.len(), last), (3, 5), "ids 3, 4 and 5 are left");
        assert_eq!(q.bytes(), recount(&q));
    }
}
