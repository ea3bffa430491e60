//! Many reference clients at once: start them, let traffic settle, and check that every
//! acknowledged message reached every member (the no-loss check of the drain, rebalance
//! and storm tests).

use crate::gateways::Gateways;
use crate::resilient::{Plan, Record, Resilient};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running client: user, rooms, the client.
pub type Running = (String, Vec<String>, Resilient);

/// A stopped client: user, rooms, observations.
pub type Finished = (String, Vec<String>, Arc<Mutex<Record>>);

/// Starts `n` reference clients in `rooms` rooms (size n/rooms), each also sending DMs,
/// authenticating as `cluster` expects.
pub fn clients(
    cluster: &Gateways,
    urls: &[String],
    n: usize,
    rooms: usize,
    send_every: Option<Duration>,
) -> Vec<Running> {
    (0..n)
        .map(|i| {
            let user = format!("u{i}");
            let my_rooms = vec![format!("room{}", i % rooms)];
            let plan = Plan {
                user: user.clone(),
                urls: urls.to_vec(),
                rooms: my_rooms.clone(),
                send_every,
                dm_to: vec![format!("u{}", (i + 1) % n), format!("u{}", (i + 7) % n)],
                max_backoff: Duration::from_secs(2),
            };
            (
                user,
                my_rooms,
                Resilient::spawn_with(plan, cluster.credentials()),
            )
        })
        .collect()
}

/// Polls `f` every 50 ms; panics naming `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops sending, lets in-flight messages arrive, then stops every client.
pub async fn settle_and_stop(cs: Vec<Running>) -> Vec<Finished> {
    for (_, _, c) in &cs {
        c.stop_sending();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut records = Vec::new();
    for (user, rooms, c) in cs {
        records.push((user, rooms, c.stop().await));
    }
    records
}

/// What the clients saw in total, for the checks a test adds.
#[derive(Debug, Default)]
pub struct Totals {
    /// Acknowledged sends checked.
    pub acked: usize,
    /// Messages seen again and dropped by (room, seq).
    pub duplicates: u64,
    /// `goaway` frames received.
    pub goaways: u64,
    /// Connections the server ended without a `goaway`.
    pub ended_without_goaway: u64,
    /// Upgrades refused with 503.
    pub refused: u64,
}

/// Every acknowledged message reached every member subscribed when it was acknowledged
/// (and DMs their user), with no gap, nothing reported unrecovered, no reply to no
/// command, and a 1-3 s `Retry-After` on every 503.
pub fn check_no_loss(records: &[Finished]) -> Totals {
    let mut members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (user, rooms, _)) in records.iter().enumerate() {
        for r in rooms {
            members.entry(r.clone()).or_default().push(i);
        }
        members.entry(format!("user:{user}")).or_default().push(i);
    }
    let recs: Vec<_> = records
        .iter()
        .map(|(_, _, r)| r.lock().unwrap_or_else(|p| p.into_inner()))
        .collect();
    let mut t = Totals::default();
    for (i, rec) in recs.iter().enumerate() {
        assert!(rec.gaps.is_empty(), "client {i} saw gaps: {:?}", rec.gaps);
        assert!(
            rec.not_recovered.is_empty(),
            "client {i}: not recovered {:?}",
            rec.not_recovered
        );
        assert_eq!(rec.stray_replies, 0, "client {i}: replies to no command");
        assert!(
            rec.retry_after
                .iter()
                .all(|s| s.is_some_and(|s| (1..=3).contains(&s))),
            "client {i}: a 503 without a 1-3 s Retry-After: {:?}",
            rec.retry_after
        );
        t.duplicates += rec.duplicates;
        t.goaways += rec.goaways;
        t.ended_without_goaway += rec.ended_without_goaway;
        t.refused += rec.refused;
        for (room, seq) in &rec.acked {
            t.acked += 1;
            for &m in members.get(room).map(Vec::as_slice).unwrap_or(&[]) {
                if recs[m].joined_at.get(room).is_some_and(|j| seq <= j) {
                    continue; // acknowledged before that member joined
                }
                let got = recs[m].received.get(room).is_some_and(|s| s.contains(seq));
                assert!(
                    got,
                    "{room} seq {seq} (acked by client {i}) never reached client {m}"
                );
            }
        }
    }
    t
}
