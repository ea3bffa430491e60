//! What the delivery counter and latency histogram cost a delivery.
//!
//! A fan-out to 1,000 members wrote each one's count and latency on its own: an atomic
//! increment, a clock read, and the histogram's atomic observation, per delivery. At 20
//! messages/s that was a sixth of the gateway's user-space time per delivery (perf,
//! bench/ab.md, 5 December, evening). A fan-out now keeps a [`Tally`] (plain adds, the
//! clock read once per [`CLOCK_EVERY`] writes) and adds it to the shared metrics once.

use crate::engine::{now_ms, Envelope};
use prometheus::local::LocalHistogram;
use prometheus::{Histogram, IntCounter};

/// A fan-out reads the clock again after this many writes. The latency is counted in
/// whole milliseconds (a message's time is Redis' or the node's clock in ms) and 16
/// writes take well under one here (3 to 9 µs each), so the figure does not move.
const CLOCK_EVERY: u32 = 16;

/// The node's delivery metrics: messages written to sockets, and their age when written.
#[derive(Clone)]
pub struct Deliveries {
    delivered: IntCounter,
    latency: Histogram,
}

impl Deliveries {
    pub(super) fn new(delivered: IntCounter, latency: Histogram) -> Deliveries {
        Deliveries { delivered, latency }
    }

    /// Counts one delivery (a writer's: its batches are few and far between); its latency
    /// only when it went out `live` (not replayed from history).
    pub fn one(&self, env: &Envelope, live: bool) {
        self.delivered.inc();
        if live && env.ts > 0 {
            self.latency.observe(age_s(now_ms(), env.ts));
        }
    }

    /// A tally for one fan-out, added to the metrics when dropped.
    pub fn tally(&self) -> Tally<'_> {
        Tally {
            of: self,
            written: 0,
            first: None,
            latency: None,
            now: 0,
            until_clock: 0,
        }
    }
}

/// One fan-out's deliveries, counted without atomics; added to [`Deliveries`] on drop.
///
/// A local histogram is an allocation of its own, so a fan-out that writes one timed
/// message (a one-member room: an inbox, a direct message) observes it in the shared
/// histogram as before, and only a second makes one.
pub struct Tally<'a> {
    of: &'a Deliveries,
    written: u64,
    /// The first timed write's age (s), until a second one comes.
    first: Option<f64>,
    latency: Option<LocalHistogram>,
    /// The clock at the last read (ms).
    now: u64,
    /// Writes until the clock is read again.
    until_clock: u32,
}

impl Tally<'_> {
    /// A message with time `ts` (ms; 0: none) was written to a socket.
    pub fn written(&mut self, ts: u64) {
        self.written += 1;
        if ts == 0 {
            return;
        }
        if self.until_clock == 0 {
            self.now = now_ms();
            self.until_clock = CLOCK_EVERY;
        }
        self.until_clock -= 1;
        let age = age_s(self.now, ts);
        if let Some(local) = &self.latency {
            local.observe(age);
        } else if let Some(first) = self.first.take() {
            let local = self.of.latency.local();
            local.observe(first);
            local.observe(age);
            self.latency = Some(local);
        } else {
            self.first = Some(age);
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if self.written > 0 {
            self.of.delivered.inc_by(self.written);
        }
        if let Some(first) = self.first {
            self.of.latency.observe(first);
        }
        // A local histogram adds itself to the shared one when dropped, after this.
    }
}

/// A message's age in seconds at `now` (both ms; a time ahead of this node's clock
/// counts as 0).
fn age_s(now: u64, ts: u64) -> f64 {
    now.saturating_sub(ts) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    fn deliveries() -> Deliveries {
        let opts = HistogramOpts::new("t", "t").buckets(vec![0.001, 0.01, 1.0, 100.0]);
        Deliveries::new(
            IntCounter::new("d", "d").expect("counter"),
            Histogram::with_opts(opts).expect("histogram"),
        )
    }

    #[test]
    fn a_tally_adds_every_write_once_dropped() {
        let d = deliveries();
        let now = now_ms();
        {
            let mut t = d.tally();
            for _ in 0..40 {
                t.written(now - 5_000);
            }
            t.written(0); // no time: counted, not timed
            assert_eq!(d.delivered.get(), 0, "nothing shared before the end");
        }
        assert_eq!(d.delivered.get(), 41);
        assert_eq!(d.latency.get_sample_count(), 40);
        let mean = d.latency.get_sample_sum() / 40.0;
        assert!((5.0..6.0).contains(&mean), "ages of ~5 s, not {mean}");
        // One timed write (no local histogram); a time ahead of this clock (another
        // pod's) is an age of 0.
        d.tally().written(now + 60_000);
        assert_eq!(d.delivered.get(), 42);
        assert_eq!(d.latency.get_sample_count(), 41);
        assert!(d.latency.get_sample_sum() / 41.0 < mean);
        // Two: both in the local histogram, added once.
        {
            let mut t = d.tally();
            t.written(now - 1_000);
            t.written(now - 1_000);
        }
        assert_eq!(d.latency.get_sample_count(), 43);
        d.tally(); // nothing written: nothing added
        assert_eq!(d.delivered.get(), 44);
    }

    #[test]
    fn a_writers_delivery_counts_at_once() {
        let d = deliveries();
        let env = Envelope::new("r".into(), 1, "e".into(), now_ms() - 2_000, None, "{}");
        d.one(&env, true);
        assert_eq!(d.delivered.get(), 1);
        assert!(d.latency.get_sample_sum() >= 2.0);
        // Replayed from history: counted, its age no delivery latency.
        d.one(&env, false);
        assert_eq!(d.delivered.get(), 2);
        assert_eq!(d.latency.get_sample_count(), 1);
    }
}
