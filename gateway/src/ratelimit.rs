//! Token buckets: per-connection command rates, and per-key (client IP, user) admission,
//! command rates and new rooms.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`; false when the bucket is empty.
    pub fn take_at(&mut self, now: Instant) -> bool {
        self.take_n_at(1, now)
    }

    /// Takes `n` tokens at `now`; false (and none taken) when fewer are left.
    pub fn take_n_at(&mut self, n: u32, now: Instant) -> bool {
        self.refill(now);
        let n = f64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes one token now.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// Sets what the bucket holds at `now` (at most its burst; below zero it refills
    /// from there): for a bucket that follows one kept elsewhere.
    pub fn set_at(&mut self, tokens: f64, now: Instant) {
        self.tokens = tokens.min(self.burst);
        self.last = now;
    }

    /// Puts back one token taken ahead of a cost that did not occur (at most the burst).
    pub fn give_back_at(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    /// Holds at most `tokens` at `now`: for a bucket that follows one kept elsewhere but
    /// has taken tokens that one has not counted yet.
    pub fn lower_to_at(&mut self, tokens: f64, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.min(tokens);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Whether a token is there at `now` (none is taken).
    fn has_token_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.burst) >= 1.0
    }

    /// Whether the bucket would be full at `now` (an idle key that can be forgotten).
    fn full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// One token bucket per key (a client IP, a user), for admission. Memory is bounded:
/// buckets that refilled completely are forgotten, and beyond `max_keys` live buckets a
/// new key is admitted without one (the shared admission rate still applies).
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: f64,
    burst: u32,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
    calls: u64,
    /// `calls` at the last sweep.
    swept_at: u64,
}

impl<K: Hash + Eq> KeyedBuckets<K> {
    /// Buckets of `rate` per second and `burst`; `rate` 0 admits everything.
    pub fn new(rate: f64, burst: u32, max_keys: usize) -> Self {
        KeyedBuckets {
            rate,
            burst: burst.max(1),
            max_keys,
            buckets: HashMap::new(),
            calls: 0,
            swept_at: 0,
        }
    }

    /// Takes one token of `key`'s bucket at `now`. The key is copied only into a new
    /// bucket: a per-command caller (`limits.userMessageRate`) allocates nothing.
    pub fn take_at<Q>(&mut self, key: &Q, now: Instant) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.rate <= 0.0 {
            return true;
        }
        self.calls += 1;
        // A sweep walks every bucket: one every 1024 calls, and at the bound one every
        // `max_keys / 64` calls, so a call costs at most about 64 buckets' walk on average.
        // (Sweeping on every call at the bound cost 100,000 a call while buckets that
        // refill slowly, a user's room starts, kept the map full.) Meanwhile a new key is
        // admitted without a bucket, as when a sweep frees none.
        let since = self.calls - self.swept_at;
        let full = self.buckets.len() >= self.max_keys;
        if since >= 1024 || (full && since as usize >= self.max_keys / 64) {
            self.buckets.retain(|_, b| !b.full_at(now));
            self.swept_at = self.calls;
        }
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.take_at(now);
        }
        if self.buckets.len() >= self.max_keys {
            return true;
        }
        let mut bucket = TokenBucket {
            last: now,
            ..TokenBucket::new(self.rate, self.burst)
        };
        let taken = bucket.take_at(now);
        self.buckets.insert(key.to_owned(), bucket);
        taken
    }

    /// Whether `key` has a token at `now`, taking none: for a cost known only afterwards
    /// (then [`take_at`](Self::take_at)). A key without a bucket has a full one.
    pub fn allows_at<Q>(&self, key: &Q, now: Instant) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rate <= 0.0 || self.buckets.get(key).is_none_or(|b| b.has_token_at(now))
    }

    /// Sets what `key`'s bucket holds at `now` (see [`TokenBucket::set_at`]); beyond
    /// `max_keys` live buckets a new key gets none, as in [`take_at`](Self::take_at).
    pub fn set_at<Q>(&mut self, key: &Q, tokens: f64, now: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.rate <= 0.0 {
            return;
        }
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.set_at(tokens, now);
        }
        if self.buckets.len() < self.max_keys {
            let mut bucket = TokenBucket::new(self.rate, self.burst);
            bucket.set_at(tokens, now);
            self.buckets.insert(key.to_owned(), bucket);
        }
    }

    /// Puts back one token of `key`'s bucket (see [`TokenBucket::give_back_at`]); a key
    /// without a bucket has a full one.
    pub fn give_back_at<Q>(&mut self, key: &Q, now: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(bucket) = self.buckets.get_mut(key) {
            bucket.give_back_at(now);
        }
    }

    /// Lowers `key`'s bucket to at most `tokens` at `now` (see
    /// [`TokenBucket::lower_to_at`]); a key without a bucket is set to them, as by
    /// [`set_at`](Self::set_at).
    pub fn lower_to_at<Q>(&mut self, key: &Q, tokens: f64, now: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.buckets.get_mut(key) {
            Some(bucket) => bucket.lower_to_at(tokens, now),
            None => self.set_at(key, tokens, now),
        }
    }

    /// Live buckets.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is live.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The gap between events at `rate` per second, held to 1 µs..1 h. Drain and rebalance
/// pace evictions with it: `1 / rate` of a valid but extreme rate is zero (a timer
/// interval panics on it) or too large for a `Duration` (`from_secs_f64` panics), and
/// either panic would skip the drain at shutdown.
pub fn gap_at(rate: f64) -> Duration {
    const SHORTEST: Duration = Duration::from_micros(1);
    const LONGEST: Duration = Duration::from_secs(3600);
    if rate.is_nan() || rate <= 0.0 {
        return LONGEST;
    }
    Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(LONGEST)
        .clamp(SHORTEST, LONGEST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20.0, 40);
        b.last = t0;
        assert_eq!((0..50).filter(|_| b.take_at(t0)).count(), 40);
        // 100 ms at 20/s refills 2 tokens.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..5).filter(|_| b.take_at(t1)).count(), 2);
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.take_at(t2)).count(), 40);
    }

    #[test]
    fn several_tokens_at_once_or_none() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 100);
        b.last = t0;
        assert!(b.take_n_at(60, t0));
        assert!(!b.take_n_at(41, t0), "40 left");
        assert!(b.take_n_at(40, t0), "the refused take took nothing");
        // 100 ms at 10/s refills one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(!b.take_n_at(2, t1));
        assert!(b.take_n_at(1, t1));
    }

    #[test]
    fn one_key_running_dry_leaves_the_others_alone() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::<String>::new(1.0, 3, 100);
        assert_eq!((0..10).filter(|_| k.take_at("flooder", t0)).count(), 3);
        assert!(k.take_at("someone else", t0));
        // A second later the flooder has one token again.
        assert!(k.take_at("flooder", t0 + Duration::from_secs(1)));
        assert!(!k.take_at("flooder", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn allows_looks_without_taking() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::<String>::new(1.0, 2, 100);
        assert!(k.allows_at("u", t0), "no bucket yet: a full one");
        assert!(k.take_at("u", t0));
        assert!(
            k.allows_at("u", t0) && k.allows_at("u", t0),
            "looking took nothing"
        );
        assert!(k.take_at("u", t0));
        assert!(!k.allows_at("u", t0), "both taken");
        assert!(
            k.allows_at("u", t0 + Duration::from_secs(1)),
            "refilled one"
        );
        assert!(
            KeyedBuckets::<String>::new(0.0, 1, 1).allows_at("u", t0),
            "rate 0"
        );
    }

    #[test]
    fn a_bucket_set_from_elsewhere_refills_from_what_it_was_set_to() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::<String>::new(1.0, 5, 100);
        k.set_at("u", 0.5, t0);
        assert!(!k.allows_at("u", t0), "half a token");
        assert!(k.allows_at("u", t0 + Duration::from_millis(500)));
        k.set_at("u", -1.0, t0);
        assert!(
            !k.take_at("u", t0 + Duration::from_millis(1500)),
            "a debt is paid first"
        );
        k.set_at("u", 99.0, t0);
        assert_eq!(
            (0..10).filter(|_| k.take_at("u", t0)).count(),
            5,
            "at most the burst"
        );
        let mut full = KeyedBuckets::<String>::new(1.0, 5, 1);
        full.set_at("a", 0.0, t0);
        full.set_at("b", 0.0, t0);
        assert!(
            full.take_at("b", t0),
            "past max_keys a new key gets no bucket"
        );
    }

    #[test]
    fn a_token_given_back_counts_again_and_lowering_never_raises() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::<String>::new(1.0, 2, 100);
        assert!(k.take_at("u", t0) && k.take_at("u", t0));
        assert!(!k.allows_at("u", t0));
        k.give_back_at("u", t0);
        assert!(k.take_at("u", t0), "the token given back");
        k.give_back_at("u", t0);
        k.give_back_at("u", t0);
        k.give_back_at("u", t0);
        assert_eq!(
            (0..5).filter(|_| k.take_at("u", t0)).count(),
            2,
            "at most the burst"
        );
        k.lower_to_at("u", 5.0, t0);
        assert!(
            !k.allows_at("u", t0),
            "lowering to more than it holds adds nothing"
        );
        k.lower_to_at("v", -1.0, t0);
        assert!(
            !k.allows_at("v", t0 + Duration::from_millis(1500)),
            "a new key: set"
        );
        assert!(k.allows_at("v", t0 + Duration::from_millis(2000)));
    }

    #[test]
    fn memory_stays_bounded_and_refilled_keys_are_forgotten() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::<i32>::new(1.0, 1, 10);
        for i in 0..50 {
            assert!(k.take_at(&i, t0), "a new key always gets its first token");
        }
        assert_eq!(k.len(), 10, "no more than max_keys buckets");
        // Once every bucket refilled, they are swept on the next call at the bound.
        assert!(k.take_at(&999, t0 + Duration::from_secs(5)));
        assert_eq!(k.len(), 1);
        assert!(
            KeyedBuckets::<i32>::new(0.0, 1, 1).take_at(&1, t0),
            "rate 0: no limit"
        );
    }

    /// At the bound with buckets that stay (slow refills), a sweep comes once every
    /// `max_keys / 64` calls, not on every call.
    #[test]
    fn a_full_map_is_swept_once_in_a_while_not_on_every_call() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::<u32>::new(0.001, 1, 6400);
        for i in 0..6400 {
            assert!(k.take_at(&i, t0));
        }
        let sweeps = k.calls / 1024;
        assert_eq!(k.swept_at, sweeps * 1024, "only the periodic sweeps so far");
        for i in 6400..6600 {
            assert!(k.take_at(&i, t0), "admitted without a bucket");
        }
        // 200 calls at the bound sweep at calls 6401 (257 since the periodic one at 6144)
        // and 6501 (100 later), not on each of them.
        assert_eq!(k.swept_at, 6501);
        assert_eq!(k.len(), 6400);
    }

    #[tokio::test]
    async fn gaps_of_extreme_rates_stay_usable() {
        assert_eq!(gap_at(100.0), Duration::from_millis(10));
        assert_eq!(gap_at(1e10), Duration::from_micros(1));
        assert_eq!(gap_at(f64::INFINITY), Duration::from_micros(1));
        assert_eq!(gap_at(1e-30), Duration::from_secs(3600));
        assert_eq!(gap_at(0.0), Duration::from_secs(3600));
        assert_eq!(gap_at(f64::NAN), Duration::from_secs(3600));
        // A timer takes every one of them.
        for rate in [1e10, 1e-30] {
            drop(tokio::time::interval(gap_at(rate)));
        }
    }
}
