//! Busy rooms' writers, woken once a window instead of once a message
//! (`limits.fanoutBatch`).
//!
//! A room whose messages come faster than its direct fan-out takes (see the hub's `Room`)
//! queues each message to its members without waking their writers, and is listed here,
//! due one window after the first such message. When it is due, the node's one wake task
//! wakes its members' writers once, and each writes what piled up in one syscall. Per
//! delivery, the syscall (about two thirds of a delivery's CPU, half of that the loopback's
//! receive path) and the wake-up are then shared by every frame of the window, for a
//! latency of at most one window, paid only where messages are that frequent.

use super::Hub;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Rooms waiting for their wake, in the order they fall due (one window each, so the
/// order they were added in).
#[derive(Default)]
pub(super) struct Wakes {
    due: Mutex<VecDeque<(Instant, Arc<str>)>>,
    /// Tells the wake task that the list is no longer empty.
    added: Notify,
}

impl Wakes {
    fn due(&self) -> MutexGuard<'_, VecDeque<(Instant, Arc<str>)>> {
        // Poisoned only by a panic mid-push of a deque: still a valid deque.
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists `room`, due `at`. A room is listed once until its wake (the hub's flag).
    pub fn add(&self, at: Instant, room: Arc<str>) {
        let mut due = self.due();
        due.push_back((at, room));
        if due.len() == 1 {
            self.added.notify_one();
        }
    }

    /// When the next room falls due.
    fn next(&self) -> Option<Instant> {
        self.due().front().map(|(at, _)| *at)
    }

    /// Takes the rooms due by `now`.
    pub fn take_due(&self, now: Instant) -> Vec<Arc<str>> {
        let mut due = self.due();
        let n = due.iter().take_while(|(at, _)| *at <= now).count();
        due.drain(..n).map(|(_, room)| room).collect()
    }
}

/// How long the idle wake task waits for a listing before it looks whether the hub is
/// still there. A listing into an empty list wakes it at once ([`Wakes::add`]).
pub(super) const IDLE_POLL: Duration = Duration::from_secs(5);

/// Wakes each listed room's writers when it falls due, until the hub is gone. It holds
/// the hub weakly but while waiting (each wait bounded), as the presence flush does.
pub(super) async fn run(hub: Weak<Hub>) {
    loop {
        let Some(h) = hub.upgrade() else { return };
        match h.wakes.next() {
            Some(at) => {
                tokio::time::sleep_until(at.into()).await;
                h.wake_due(Instant::now());
            }
            None => {
                let added = h.wakes.added.notified();
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = added => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_fall_due_in_order_and_once() {
        let w = Wakes::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(w.next(), None);
        w.add(t0 + ms(10), "a".into());
        w.add(t0 + ms(12), "b".into());
        assert_eq!(w.next(), Some(t0 + ms(10)));
        assert!(w.take_due(t0 + ms(9)).is_empty());
        assert_eq!(w.take_due(t0 + ms(10)), vec![Arc::<str>::from("a")]);
        assert_eq!(w.take_due(t0 + ms(20)), vec![Arc::<str>::from("b")]);
        assert!(w.take_due(t0 + ms(30)).is_empty());
        assert_eq!(w.next(), None);
    }
}
