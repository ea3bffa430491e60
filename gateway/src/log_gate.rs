//! At most one log line a period for a failure that comes with every client's requests at
//! once: Redis down or refusing, a backend hook down, and what each connection fails to do
//! in such an outage. A line per request buried everything else in the log and cost more
//! than the failure itself (a dead send hook on a release build: 203 bytes of log and
//! about 13 µs of CPU per message, 96 against 82.5 µs a send, where the hook's own failed
//! call cost about 7). The gate lets one line through every [`LOG_EVERY`] and counts the
//! ones it held back, for the next line's `unlogged` field; the metrics still count every
//! failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The period of the gates on failure lines (each gate its own: one per hook, one for a
/// node's Redis operations, one for its connections' failed engine calls).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// `warn_gated!(gate, fields.., "message")`: a `tracing::warn!` line when `gate`
/// ([`LogGate`]) lets it through, with an `unlogged` field for the lines held back since.
macro_rules! warn_gated {
    ($gate:expr, $($line:tt)+) => {
        if let Some(unlogged) = $gate.pass_now() {
            tracing::warn!(unlogged, $($line)+);
        }
    };
}
pub(crate) use warn_gated;

/// Lets one log line through every so often and counts the ones held back.
#[derive(Debug)]
pub struct LogGate {
    every_ms: u64,
    /// Unix ms from which the next line may be logged.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate::new(LOG_EVERY)
    }
}

impl LogGate {
    /// A gate letting one line through every `every`.
    pub fn new(every: Duration) -> LogGate {
        LogGate {
            every_ms: every.as_millis().try_into().unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// At `now_ms`: `Some(lines held back since the last one)` when this line may be
    /// logged, `None` (and counted) when it is held back.
    pub fn pass(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        let open = now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.every_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if open {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// [`pass`](Self::pass) now.
    pub fn pass_now(&self) -> Option<u64> {
        self.pass(crate::engine::now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_lets_one_line_through_a_period_and_counts_the_rest() {
        let gate = LogGate::new(Duration::from_secs(10));
        assert_eq!(gate.pass(1_000), Some(0), "the first line goes out");
        assert_eq!(gate.pass(1_001), None);
        assert_eq!(gate.pass(10_999), None);
        assert_eq!(gate.pass(11_000), Some(2), "with the two held back");
        assert_eq!(gate.pass(11_000), None);
        assert_eq!(gate.pass(30_000), Some(1));
        assert_eq!(gate.pass(40_000), Some(0));
    }

    #[test]
    fn a_zero_period_lets_every_line_through() {
        let gate = LogGate::new(Duration::ZERO);
        assert_eq!(
            (gate.pass(5), gate.pass(5), gate.pass(6)),
            (Some(0), Some(0), Some(0))
        );
    }
}
