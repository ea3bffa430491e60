//! The cluster subscriber's record of its shard channels, without I/O: the rules
//! [`sharded`](super::sharded) applies, tested here.
//! - A channel is lost until Redis' confirmation push for it arrives, never on a
//!   command's `Ok`: the redis crate re-subscribes a node with one `SSUBSCRIBE` for many
//!   channels and takes one confirmation as its reply, so the others answer whatever is
//!   sent next on that node connection, and a refused `SSUBSCRIBE` can be told `Ok`.
//! - A confirmation after a channel's first means it was subscribed again: messages may
//!   have been missed, so its gap is filled. So does a first confirmation that came only
//!   after a retry round subscribed the channel again: the join that asked first was told
//!   `Ok` and read the room's head long before, and what was published in between reached
//!   neither its catch-up nor the channel.
//! - Rounds that keep failing for [`RENEW_AFTER`] replace the client.
//! - A ping of every master that goes unanswered loses every channel (a node that froze
//!   or vanished sends no reset: its subscriptions would stay dead on an open socket),
//!   once per outage; pings unanswered for [`RENEW_AFTER`] replace the client.

use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// Channels still lost after this long of failed rounds: the pub/sub client is replaced.
pub(super) const RENEW_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Channels {
    /// Channels Redis confirmed at least once.
    confirmed: HashSet<String>,
    /// Channels not subscribed (lost, or not confirmed yet).
    lost: HashSet<String>,
    /// Channels a round subscribed before Redis ever confirmed them (see the module docs).
    retried: HashSet<String>,
    /// Since when rounds have failed (one outage, until nothing is lost).
    failing_since: Option<Instant>,
    /// Since when pings have gone unanswered.
    unanswered_since: Option<Instant>,
}

/// What a confirmation push means.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Confirmed {
    /// Subscribed again after an earlier confirmation: fill the gap.
    pub again: bool,
    /// That was the last lost channel: everything is subscribed.
    pub all_back: bool,
    /// ... after failed rounds (the end of an outage, logged once).
    pub outage_over: bool,
}

/// What an unanswered ping means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unanswered {
    /// Nothing was lost: every channel must be subscribed again.
    LoseAll,
    /// Channels are being subscribed again already (the same outage).
    Ongoing,
    /// Unanswered for [`RENEW_AFTER`]: replace the client.
    Renew,
}

/// What a round with a failed `SSUBSCRIBE` means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failed {
    /// The first failure of an outage (logged once).
    First,
    /// Failing for less than [`RENEW_AFTER`].
    Ongoing,
    /// Failing for [`RENEW_AFTER`]: replace the client.
    Renew,
}

impl Channels {
    /// Nothing subscribed yet: `initial` is lost until confirmed.
    pub fn new(initial: impl IntoIterator<Item = String>) -> Channels {
        Channels {
            lost: initial.into_iter().collect(),
            ..Channels::default()
        }
    }

    /// Channels to subscribe again (a node dropped, the client was replaced).
    pub fn lose(&mut self, channels: impl IntoIterator<Item = String>) {
        self.lost.extend(channels);
    }

    /// A join's `SSUBSCRIBE` said `Ok`: the channel counts once its confirmation arrives,
    /// and is tried again by the rounds if it never does.
    pub fn await_confirmation(&mut self, channel: String) {
        self.lost.insert(channel);
    }

    /// Redis confirmed a subscription.
    pub fn confirm(&mut self, channel: &str) -> Confirmed {
        let first = self.confirmed.insert(channel.to_string());
        let again = self.retried.remove(channel) || !first;
        let all_back = self.lost.remove(channel) && self.lost.is_empty();
        let outage_over = all_back && self.failing_since.take().is_some();
        Confirmed {
            again,
            all_back,
            outage_over,
        }
    }

    /// Redis dropped a subscription (its slot moved, its node stepped down). A channel
    /// still `wanted` is lost, and its next confirmation counts as a re-subscription (the
    /// gap is filled); true when it is lost.
    pub fn unsubscribed(&mut self, channel: &str, wanted: bool) -> bool {
        if wanted {
            self.confirmed.insert(channel.to_string());
            self.lost.insert(channel.to_string());
        } else {
            self.confirmed.remove(channel);
            self.retried.remove(channel);
        }
        wanted
    }

    /// This node left the channel: no longer retried.
    pub fn forget(&mut self, channel: &str) {
        self.lost.remove(channel);
        self.retried.remove(channel);
    }

    /// The channels lost now.
    pub fn lost(&self) -> Vec<String> {
        self.lost.iter().cloned().collect()
    }

    /// The channels a round subscribes again now: [`lost`](Self::lost), those never
    /// confirmed noted as retried.
    pub fn round(&mut self) -> Vec<String> {
        for channel in &self.lost {
            if !self.confirmed.contains(channel) {
                self.retried.insert(channel.clone());
            }
        }
        self.lost()
    }

    pub fn lost_count(&self) -> usize {
        self.lost.len()
    }

    /// A round in which some `SSUBSCRIBE` failed, at `now`; None when nothing is lost
    /// any more (confirmed meanwhile).
    pub fn round_failed(&mut self, now: Instant) -> Option<Failed> {
        if self.lost.is_empty() {
            return None;
        }
        Some(match self.failing_since {
            None => {
                self.failing_since = Some(now);
                Failed::First
            }
            Some(since) if now.duration_since(since) >= RENEW_AFTER => Failed::Renew,
            Some(_) => Failed::Ongoing,
        })
    }

    /// A ping of every master was answered.
    pub fn answered(&mut self) {
        self.unanswered_since = None;
    }

    /// A ping of every master went unanswered at `now`. Only the first of an outage
    /// loses the channels: while the silent node stays in the client's view, later pings
    /// fail too, and losing every channel each time would subscribe and fill everything
    /// again every second. Unanswered that long, the client is replaced instead.
    pub fn unanswered(&mut self, now: Instant) -> Unanswered {
        match self.unanswered_since {
            None => {
                self.unanswered_since = Some(now);
                if self.lost.is_empty() {
                    Unanswered::LoseAll
                } else {
                    Unanswered::Ongoing
                }
            }
            Some(since) if now.duration_since(since) >= RENEW_AFTER => {
                self.unanswered_since = Some(now);
                Unanswered::Renew
            }
            Some(_) => Unanswered::Ongoing,
        }
    }

    /// The client was replaced at `now`: every channel in `all` is lost, and the wait
    /// before the next replacement starts again (the same outage goes on).
    pub fn renewed(&mut self, now: Instant, all: impl IntoIterator<Item = String>) {
        self.failing_since = Some(now);
        self.lose(all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn a_channel_is_lost_until_redis_confirms_it() {
        let mut c = Channels::new(names(&["a", "b"]));
        assert_eq!(sorted(c.lost()), ["a", "b"]);
        assert_eq!(c.confirm("a"), Confirmed::default(), "first, b still lost");
        assert_eq!(c.lost(), ["b"]);
        let last = c.confirm("b");
        assert!(
            last.all_back && !last.again && !last.outage_over,
            "{last:?}"
        );
        assert!(c.lost().is_empty());
    }

    #[test]
    fn a_join_answered_ok_still_waits_for_its_confirmation() {
        let mut c = Channels::new(Vec::new());
        c.await_confirmation("r".into());
        assert_eq!(c.lost(), ["r"], "tried again until confirmed");
        let r = c.confirm("r");
        assert!(
            r.all_back && !r.again,
            "a first confirmation fills nothing: {r:?}"
        );
    }

    /// A join's `SSUBSCRIBE` told `Ok` (another command's reply) whose confirmation only
    /// a later round brings: messages published since the join read the room's head
    /// reached nobody, so that first confirmation fills the gap.
    #[test]
    fn a_first_confirmation_after_a_retry_round_fills_the_gap() {
        let mut c = Channels::new(Vec::new());
        c.await_confirmation("r".into());
        assert_eq!(c.round(), ["r"]);
        let r = c.confirm("r");
        assert!(r.all_back && r.again, "{r:?}");
        // Once: its next confirmation is a re-subscription anyway, and a channel left
        // meanwhile forgets it.
        c.await_confirmation("s".into());
        c.round();
        c.forget("s");
        assert!(!c.confirm("s").again, "left before its confirmation");
    }

    #[test]
    fn a_confirmation_after_the_first_asks_for_a_fill() {
        let mut c = Channels::new(names(&["a"]));
        assert!(!c.confirm("a").again);
        c.lose(names(&["a"]));
        assert!(c.confirm("a").again, "subscribed again after a loss");
        assert!(
            c.confirm("a").again,
            "a repeated confirmation fills (harmlessly)"
        );
    }

    #[test]
    fn a_moved_channel_is_lost_and_filled_when_confirmed_again() {
        let mut c = Channels::new(names(&["a", "b"]));
        c.confirm("a");
        c.confirm("b");
        assert!(c.unsubscribed("a", true));
        assert_eq!(c.lost(), ["a"]);
        assert!(c.confirm("a").again);
        assert!(!c.unsubscribed("b", false), "left: not wanted");
        assert!(c.lost().is_empty());
        assert!(
            !c.confirm("b").again,
            "joined anew later: a first confirmation"
        );
    }

    #[test]
    fn a_left_channel_is_not_retried() {
        let mut c = Channels::new(names(&["a"]));
        c.forget("a");
        assert!(c.lost().is_empty());
        assert_eq!(c.round_failed(Instant::now()), None);
    }

    #[test]
    fn failing_rounds_renew_the_client_every_renew_after() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Channels::new(names(&["a", "b"]));
        assert_eq!(c.round_failed(t0), Some(Failed::First));
        assert_eq!(c.round_failed(t0 + s), Some(Failed::Ongoing));
        assert_eq!(c.round_failed(t0 + RENEW_AFTER), Some(Failed::Renew));
        c.confirm("a");
        c.renewed(t0 + RENEW_AFTER, names(&["a", "b"]));
        assert_eq!(
            sorted(c.lost()),
            ["a", "b"],
            "the new client holds nothing yet"
        );
        assert_eq!(
            c.round_failed(t0 + RENEW_AFTER + s),
            Some(Failed::Ongoing),
            "the same outage: logged once"
        );
        assert_eq!(c.round_failed(t0 + RENEW_AFTER * 2), Some(Failed::Renew));
        let a = c.confirm("a");
        assert!(
            a.again && !a.all_back,
            "held before the renewal: filled; {a:?}"
        );
        let b = c.confirm("b");
        assert!(b.all_back && b.outage_over && !b.again, "b's first: {b:?}");
        assert_eq!(c.round_failed(t0 + RENEW_AFTER * 3), None, "nothing lost");
        c.lose(names(&["a"]));
        assert_eq!(
            c.round_failed(t0 + RENEW_AFTER * 3),
            Some(Failed::First),
            "a new outage"
        );
    }

    #[test]
    fn unanswered_pings_lose_everything_once_then_renew_the_client() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Channels::new(names(&["a", "b"]));
        c.confirm("a");
        c.confirm("b");
        assert_eq!(c.unanswered(t0), Unanswered::LoseAll);
        c.lose(names(&["a", "b"]));
        // Later unanswered pings of the same outage lose nothing more, even once every
        // channel is back (no re-subscription every second)...
        assert_eq!(c.unanswered(t0 + s), Unanswered::Ongoing);
        c.confirm("a");
        c.confirm("b");
        assert_eq!(c.unanswered(t0 + s * 2), Unanswered::Ongoing);
        // ... until it lasted RENEW_AFTER: a new client, and the wait starts again.
        assert_eq!(c.unanswered(t0 + RENEW_AFTER), Unanswered::Renew);
        assert_eq!(c.unanswered(t0 + RENEW_AFTER + s), Unanswered::Ongoing);
        // An answer ends the outage: the next silence is a new one.
        c.answered();
        assert_eq!(c.unanswered(t0 + RENEW_AFTER * 2), Unanswered::LoseAll);
        // One that starts while channels are lost leaves them to the rounds.
        c.answered();
        c.lose(names(&["a"]));
        assert_eq!(c.unanswered(t0 + RENEW_AFTER * 3), Unanswered::Ongoing);
    }
}
