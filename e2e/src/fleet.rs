//! Many reference clients ([`Resilient`]) at once: start them in rooms, let traffic
//! settle, and judge what they saw. The verdict is the no-loss check of the drain,
//! rebalance and storm tests and of the cluster suite (`chat-fleet`): every acknowledged
//! message reached every member subscribed when it was acknowledged (and DMs their user),
//! no gap, nothing reported unrecovered, no message stored twice, no reply to no command,
//! a 1-3 s `Retry-After` on every 503, every client back in its rooms when stopped, and
//! (where asked) every client that lost its connection resumed its session.

use crate::gateways::Gateways;
use crate::resilient::{Credentials, Plan, Record, Resilient};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running client: user, rooms, the client.
pub type Running = (String, Vec<String>, Resilient);

/// A stopped client: user, rooms, observations.
pub type Finished = (String, Vec<String>, Arc<Mutex<Record>>);

/// Starts `n` clients `{prefix}{i}` in `rooms` rooms `{prefix}room{k}` (size n/rooms),
/// each also sending DMs to two others, authenticating with `credentials`.
pub fn spawn(
    prefix: &str,
    urls: &[String],
    n: usize,
    rooms: usize,
    send_every: Option<Duration>,
    credentials: &Credentials,
) -> Vec<Running> {
    (0..n)
        .map(|i| {
            let user = format!("{prefix}{i}");
            let my_rooms = vec![format!("{prefix}room{}", i % rooms.max(1))];
            let plan = Plan {
                user: user.clone(),
                urls: urls.to_vec(),
                rooms: my_rooms.clone(),
                send_every,
                dm_to: vec![
                    format!("{prefix}{}", (i + 1) % n),
                    format!("{prefix}{}", (i + 7) % n),
                ],
                max_backoff: Duration::from_secs(2),
            };
            let client = Resilient::spawn_with(plan, credentials.clone());
            (user, my_rooms, client)
        })
        .collect()
}

/// [`spawn`] for the gateways of `cluster` (users `u{i}`), authenticating as they expect.
pub fn clients(
    cluster: &Gateways,
    urls: &[String],
    n: usize,
    rooms: usize,
    send_every: Option<Duration>,
) -> Vec<Running> {
    spawn("u", urls, n, rooms, send_every, &cluster.credentials())
}

/// Polls `f` every 50 ms; panics naming `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops sending, then waits until every client is back in its rooms (joined, or resumed
/// after its last reconnect) and `settle` has passed since the stop and since the last
/// disconnect (in-flight messages and replays arrive meanwhile), at most `back_within`
/// beyond that; then stops
/// every client. A client stopped between a `goaway` and its resume cannot have what was
/// sent while it was away: the verdict names such clients instead of counting their
/// misses as loss.
pub async fn settle_and_stop_after(
    cs: Vec<Running>,
    settle: Duration,
    back_within: Duration,
) -> Vec<Finished> {
    for (_, _, c) in &cs {
        c.stop_sending();
    }
    let stopped_sending = Instant::now();
    let deadline = stopped_sending + settle + back_within;
    loop {
        let now = Instant::now();
        // The settle time counts from the later of the stop and the last disconnect.
        let mut since = stopped_sending;
        let mut all_back = true;
        for (_, _, c) in &cs {
            c.with(|r| {
                all_back &= r.in_session;
                since = since.max(r.disconnects.last().copied().unwrap_or(since));
            });
        }
        let quiet = now.duration_since(since) >= settle;
        if (all_back && quiet) || now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut records = Vec::new();
    for (user, rooms, c) in cs {
        records.push((user, rooms, c.stop().await));
    }
    records
}

/// [`settle_and_stop_after`] with the 3 s the in-process tests allow (and 30 s more for
/// clients to come back).
pub async fn settle_and_stop(cs: Vec<Running>) -> Vec<Finished> {
    settle_and_stop_after(cs, Duration::from_secs(3), Duration::from_secs(30)).await
}

/// What a fleet's records show.
#[derive(Debug, Default, serde::Serialize)]
pub struct Verdict {
    /// Acknowledged sends checked.
    pub acked: usize,
    /// Messages clients saw again and dropped by (room, seq).
    pub duplicates_dropped: u64,
    /// Clients that connected more than once.
    pub reconnected: usize,
    /// Successful resumes, all clients together.
    pub resumes: u64,
    /// `goaway` frames received.
    pub goaways: u64,
    /// Connections the server ended without a `goaway`.
    pub ended_without_goaway: u64,
    /// Upgrades refused with 503.
    pub refused: u64,
    /// Everything wrong, one line each (empty: the fleet saw nothing lost or doubled).
    pub problems: Vec<String>,
}

/// Judges stopped clients. `require_resume`: a client that reconnected must have resumed
/// its session at least once (a drain, a kill or a roll hands sessions on).
pub fn verdict(records: &[Finished], require_resume: bool) -> Verdict {
    let mut members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (user, rooms, _)) in records.iter().enumerate() {
        for r in rooms {
            members.entry(r.clone()).or_default().push(i);
        }
        members
            .entry(chat_gateway::protocol::inbox_of(user))
            .or_default()
            .push(i);
    }
    let recs: Vec<_> = records
        .iter()
        .map(|(_, _, r)| r.lock().unwrap_or_else(|p| p.into_inner()))
        .collect();
    let mut v = Verdict::default();
    for (i, rec) in recs.iter().enumerate() {
        let user = &records[i].0;
        if !rec.gaps.is_empty() {
            v.problems.push(format!("{user} saw gaps: {:?}", rec.gaps));
        }
        if !rec.not_recovered.is_empty() {
            v.problems
                .push(format!("{user}: not recovered {:?}", rec.not_recovered));
        }
        for (room, id, a, b) in &rec.twice {
            v.problems.push(format!(
                "{user}: {room} msg_id {id} delivered as seq {a} and {b}"
            ));
        }
        if rec.stray_replies > 0 {
            v.problems.push(format!(
                "{user}: {} replies to no command",
                rec.stray_replies
            ));
        }
        let bad_retry: Vec<_> = rec
            .retry_after
            .iter()
            .filter(|s| !s.is_some_and(|s| (1..=3).contains(&s)))
            .collect();
        if !bad_retry.is_empty() {
            v.problems.push(format!(
                "{user}: a 503 without a 1-3 s Retry-After: {bad_retry:?}"
            ));
        }
        if !rec.in_session {
            v.problems.push(format!(
                "{user} was not back in its rooms when stopped (connected: {}; failed resumes: {:?})",
                rec.connected, rec.resume_failures
            ));
        }
        if rec.connects.len() > 1 {
            v.reconnected += 1;
            if require_resume && rec.resumes == 0 {
                v.problems.push(format!(
                    "{user} reconnected {} times and never resumed (failed resumes: {:?})",
                    rec.connects.len() - 1,
                    rec.resume_failures
                ));
            }
        }
        v.resumes += rec.resumes;
        v.duplicates_dropped += rec.duplicates;
        v.goaways += rec.goaways;
        v.ended_without_goaway += rec.ended_without_goaway;
        v.refused += rec.refused;
        for (room, seq) in &rec.acked {
            v.acked += 1;
            for &m in members.get(room).map(Vec::as_slice).unwrap_or(&[]) {
                if recs[m].joined_at.get(room).is_some_and(|j| seq <= j) {
                    continue; // acknowledged before that member joined
                }
                if !recs[m].received.get(room).is_some_and(|s| s.contains(seq)) {
                    v.problems.push(format!(
                        "{room} seq {seq} (acknowledged to {user}) never reached {}",
                        records[m].0
                    ));
                }
            }
        }
    }
    v
}

/// The verdict of an in-process test, which must show no problem (the first 20 are
/// printed otherwise).
pub fn check_no_loss(records: &[Finished]) -> Verdict {
    let v = verdict(records, false);
    assert!(
        v.problems.is_empty(),
        "{} problems, first 20: {:#?}",
        v.problems.len(),
        &v.problems[..v.problems.len().min(20)]
    );
    v
}
