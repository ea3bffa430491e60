//! Subscription linger: a room's channel stays subscribed for [`LINGER`] after its last
//! local member left. A room whose members come and go one at a time (a direct chat, a
//! small room, a client reconnecting) otherwise costs this node a SUBSCRIBE, the room's
//! top read for the gap-free catch-up and an UNSUBSCRIBE each time it empties and fills
//! again: 10–25% of the gateway's CPU per connect/join/leave/close cycle at 5,000 cycles/s
//! over 100 rooms (bench/ab.md, "4 December 2026, late"). A joiner within the linger finds
//! the room still delivered and takes the subscriber's fast path, as a second member would.
//!
//! While a room lingers its messages still reach the node and are dropped by the hub (no
//! local member): that traffic, for at most [`LINGER`], is the price. At most
//! [`MAX_LINGERING`] rooms linger at once; beyond that a room is unsubscribed at once, as
//! without the linger. Inboxes do not linger: the node-wide inbox channel carries them
//! and leaving one costs no Redis command.
//!
//! One task per engine sends the due unsubscribes to the subscriber, which keeps a room
//! that has a local member again by then (its usual check); the task holds the table and
//! the subscriber's queue weakly and ends with the engine.

use super::shared::lock;
use super::subscriber::Cmd;
use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a room's channel outlives its last local member.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// Rooms lingering at once at most (a client joining and leaving many rooms must not grow
/// this node's subscriptions without bound).
pub(super) const MAX_LINGERING: usize = 4096;

/// How often due rooms are looked for: a room lingers between [`LINGER`] and
/// `LINGER + TICK`.
const TICK: Duration = Duration::from_millis(250);

/// The rooms lingering now, with when each is due to be unsubscribed.
#[derive(Default)]
pub(super) struct SubLinger {
    due: Mutex<HashMap<String, Instant>>,
}

impl SubLinger {
    /// Keeps `room` subscribed for [`LINGER`] from now; false when the table is full (the
    /// caller unsubscribes at once).
    pub(super) fn hold(&self, room: &str) -> bool {
        let mut due = lock(&self.due);
        let until = Instant::now() + LINGER;
        if let Some(at) = due.get_mut(room) {
            *at = until;
            return true;
        }
        if due.len() >= MAX_LINGERING {
            return false;
        }
        due.insert(room.to_string(), until);
        true
    }

    /// A joiner is back: the room no longer waits for its unsubscribe.
    pub(super) fn release(&self, room: &str) {
        let mut due = lock(&self.due);
        if !due.is_empty() {
            due.remove(room);
        }
    }

    /// Takes the rooms due at `now`.
    fn take_due(&self, now: Instant) -> Vec<String> {
        let mut due = lock(&self.due);
        let rooms: Vec<String> = due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(room, _)| room.clone())
            .collect();
        for room in &rooms {
            due.remove(room);
        }
        rooms
    }
}

/// Sends the unsubscribes of due rooms to the subscriber until stopped or the engine is
/// gone. Nobody waits for their outcome: the leave that started the linger has returned.
pub(super) async fn run(
    linger: Weak<SubLinger>,
    tx: mpsc::WeakUnboundedSender<Cmd>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            now = tick.tick() => {
                let (Some(linger), Some(tx)) = (linger.upgrade(), tx.upgrade()) else { return };
                for room in linger.take_due(now) {
                    let (reply, _) = tokio::sync::oneshot::channel();
                    if tx.send(Cmd::Unsubscribe(room, reply)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_room_is_due_after_the_linger_and_a_rejoin_takes_it_back() {
        let linger = SubLinger::default();
        assert!(linger.hold("a"));
        assert!(linger.hold("b"));
        tokio::time::advance(LINGER / 2).await;
        assert!(linger.take_due(Instant::now()).is_empty(), "not yet");
        // "a" left again: its linger starts over; "b" has a member again.
        assert!(linger.hold("a"));
        linger.release("b");
        tokio::time::advance(LINGER / 2).await;
        assert!(
            linger.take_due(Instant::now()).is_empty(),
            "a's linger started over"
        );
        tokio::time::advance(LINGER / 2).await;
        assert_eq!(linger.take_due(Instant::now()), vec!["a".to_string()]);
        assert!(linger.take_due(Instant::now()).is_empty(), "taken once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_turns_a_room_away() {
        let linger = SubLinger::default();
        for i in 0..MAX_LINGERING {
            assert!(linger.hold(&format!("r{i}")));
        }
        assert!(!linger.hold("one more"), "full: unsubscribed at once");
        assert!(linger.hold("r0"), "a room already lingering is held again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_sends_each_due_room_once_and_ends_with_the_engine() {
        let linger = Arc::new(SubLinger::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            Arc::downgrade(&linger),
            tx.downgrade(),
            CancellationToken::new(),
        ));
        assert!(linger.hold("room"));
        tokio::time::sleep(LINGER + TICK * 2).await;
        match rx.try_recv() {
            Ok(Cmd::Unsubscribe(room, _)) => assert_eq!(room, "room"),
            _ => panic!("no unsubscribe for the due room"),
        }
        assert!(rx.try_recv().is_err(), "sent once");
        drop(linger);
        tokio::time::sleep(TICK * 2).await;
        assert!(task.is_finished(), "ends once the engine's table is gone");
    }
}
