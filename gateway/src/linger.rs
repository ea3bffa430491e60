//! Presence linger: a connection's presence in a room outlives its `leave` (or its close)
//! by `limits.presenceLinger`. A join of the same room by the same connection within that
//! time takes the lingering entry back, and a new connection of the same user finds the
//! user still present: either way nothing is announced. So a socket looping join/leave
//! (or connect/join/close) costs its room one `join` and one `leave` event, not one per
//! turn for every member (the fan-out amplification of issue 18).
//!
//! One task per node fires the deferred leaves in due order; it holds the linger weakly
//! and ends with the node.

use crate::engine::{Engine, PresenceLeave};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Leaves fired at once at most (a mass close during an outage must not queue them
/// behind one another's timeouts).
const BATCH: usize = 256;

/// A deferred leave: who and which presence member.
#[derive(Clone)]
struct Pending {
    user: String,
    member: String,
    generation: u64,
}

#[derive(Default)]
struct State {
    /// (room, connection) -> the leave waiting for its time.
    pending: HashMap<(Arc<str>, String), Pending>,
    /// Due time order (the delay is constant, so push order is due order).
    queue: VecDeque<(Instant, Arc<str>, String, u64)>,
    generation: u64,
}

/// The node's deferred presence leaves.
pub struct Linger {
    engine: Arc<dyn Engine>,
    delay: Duration,
    state: Mutex<State>,
    wake: Notify,
    started: OnceLock<()>,
    /// Failed leaves' log lines: during a Redis outage every close fails its leaves.
    failures: crate::log_gate::LogGate,
}

impl Linger {
    /// Leaves through `engine`, each `delay` after it was asked for (0: at once).
    pub fn new(engine: Arc<dyn Engine>, delay: Duration) -> Arc<Linger> {
        Arc::new(Linger {
            engine,
            delay,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            started: OnceLock::new(),
            failures: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes connection `conn`'s presence in `room` out after the linger. `member` is the
    /// presence entry its join made.
    pub async fn leave(self: &Arc<Self>, room: &Arc<str>, user: &str, conn: &str, member: String) {
        if self.delay.is_zero() {
            if let Err(e) = self.engine.presence_leave(room, user, &member).await {
                // Presence entries expire on their own; a failed leave only shows the
                // user for a little longer.
                crate::log_gate::warn_gated!(self.failures, room = %room, error = %e, "presence leave failed");
            }
            return;
        }
        self.started.get_or_init(|| {
            tokio::spawn(run(Arc::downgrade(self)));
        });
        let mut s = self.lock();
        s.generation += 1;
        let generation = s.generation;
        let due = Instant::now() + self.delay;
        s.pending.insert(
            (room.clone(), conn.to_string()),
            Pending {
                user: user.to_string(),
                member,
                generation,
            },
        );
        s.queue
            .push_back((due, room.clone(), conn.to_string(), generation));
        drop(s);
        self.wake.notify_one();
    }

    /// Connection `conn` joins `room` again: its lingering presence entry, if any, is
    /// taken back (no leave, and no join to announce). Returns that entry's member.
    pub fn rejoin(&self, room: &Arc<str>, conn: &str) -> Option<String> {
        self.lock()
            .pending
            .remove(&(room.clone(), conn.to_string()))
            .map(|p| p.member)
    }

    /// Fires every deferred leave now (shutdown).
    pub async fn flush(&self) {
        loop {
            let due = self.take_due(None);
            if due.is_empty() {
                return;
            }
            self.fire(due).await;
        }
    }

    /// Removes up to [`BATCH`] leaves due by `now` (all of them with `None`).
    fn take_due(&self, now: Option<Instant>) -> Vec<(Arc<str>, Pending)> {
        let mut s = self.lock();
        let mut out = Vec::new();
        while out.len() < BATCH {
            let Some((due, _, _, _)) = s.queue.front() else {
                break;
            };
            if now.is_some_and(|now| *due > now) {
                break;
            }
            let Some((_, room, conn, generation)) = s.queue.pop_front() else {
                break;
            };
            let key = (room.clone(), conn);
            // Taken back by a rejoin, or deferred again later: not this entry's turn.
            if s.pending
                .get(&key)
                .is_some_and(|p| p.generation == generation)
            {
                if let Some(p) = s.pending.remove(&key) {
                    out.push((room, p));
                }
            }
        }
        out
    }

    /// Fires leaves all at once: the engine may take them in a few round trips (Redis:
    /// one script call for many), not one each.
    async fn fire(&self, due: Vec<(Arc<str>, Pending)>) {
        let leaves: Vec<PresenceLeave> = due
            .iter()
            .map(|(room, p)| PresenceLeave {
                room,
                user: &p.user,
                conn: &p.member,
            })
            .collect();
        if let Err(e) = self.engine.presence_leave_all(&leaves).await {
            crate::log_gate::warn_gated!(self.failures, leaves = leaves.len(), error = %e, "presence leaves failed");
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.lock().queue.front().map(|(due, ..)| *due)
    }
}

/// Fires deferred leaves when they are due, until the node is gone.
async fn run(linger: Weak<Linger>) {
    loop {
        let Some(l) = linger.upgrade() else { return };
        let due = l.take_due(Some(Instant::now()));
        if !due.is_empty() {
            l.fire(due).await;
            continue;
        }
        // Every wait is bounded, so the task notices within seconds that the node is gone
        // (it holds the linger only while waiting).
        let wake = l.wake.notified();
        let until = l
            .next_due()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = wake => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::memory::MemoryEngine;
    use crate::hub::Hub;

    fn linger(delay_ms: u64) -> (Arc<Linger>, Arc<dyn Engine>) {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(
            Arc::new(Hub::default()),
            &Config::default(),
        ));
        (
            Linger::new(engine.clone(), Duration::from_millis(delay_ms)),
            engine,
        )
    }

    // Paused: the linger's timer fires before the test's longer sleeps, however late
    // the thread runs.
    #[tokio::test(start_paused = true)]
    async fn a_leave_happens_after_the_linger_unless_the_connection_rejoins() {
        let (l, engine) = linger(100);
        let room: Arc<str> = "r".into();
        engine.presence_join(&room, "u", "c.1").await.expect("join");
        l.leave(&room, "u", "c", "c.1".into()).await;
        assert_eq!(engine.presence("r").await.expect("list"), ["u"], "lingers");
        assert_eq!(l.rejoin(&room, "c"), Some("c.1".into()), "taken back");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            engine.presence("r").await.expect("list"),
            ["u"],
            "never left"
        );

        l.leave(&room, "u", "c", "c.1".into()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(engine.presence("r").await.expect("list").is_empty(), "left");
        assert_eq!(l.rejoin(&room, "c"), None);
    }

    #[tokio::test]
    async fn flush_fires_everything_and_zero_delay_leaves_at_once() {
        let (l, engine) = linger(60_000);
        let room: Arc<str> = "r".into();
        engine.presence_join(&room, "u", "c.1").await.expect("join");
        l.leave(&room, "u", "c", "c.1".into()).await;
        l.flush().await;
        assert!(engine.presence("r").await.expect("list").is_empty());

        let (now, engine) = linger(0);
        engine.presence_join(&room, "u", "c.1").await.expect("join");
        now.leave(&room, "u", "c", "c.1".into()).await;
        assert!(engine.presence("r").await.expect("list").is_empty());
    }
}
