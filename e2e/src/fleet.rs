//! A fleet of reference clients ([`Resilient`]) in rooms, and the verdict the drain tests
//! and the cluster suite judge it by: every acknowledged message reached every member
//! subscribed when it was acknowledged (and DMs their user), no gap, nothing reported
//! unrecovered, no message stored twice, and every client that lost its connection
//! resumed its session.

use crate::resilient::{Plan, Record, Resilient};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A stopped client: user, rooms, observations.
pub type Finished = (String, Vec<String>, Arc<Mutex<Record>>);

/// Starts `n` clients `{prefix}{i}` in `rooms` rooms `{prefix}room{k}` (size n/rooms),
/// each also sending DMs to two others.
pub fn spawn(
    prefix: &str,
    urls: &[String],
    n: usize,
    rooms: usize,
    send_every: Option<Duration>,
) -> Vec<(String, Vec<String>, Resilient)> {
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
            (user, my_rooms, Resilient::spawn(plan))
        })
        .collect()
}

/// Stops sending, lets in-flight messages arrive for `settle`, then stops every client.
pub async fn settle_and_stop(
    cs: Vec<(String, Vec<String>, Resilient)>,
    settle: Duration,
) -> Vec<Finished> {
    for (_, _, c) in &cs {
        c.stop_sending();
    }
    tokio::time::sleep(settle).await;
    let mut records = Vec::new();
    for (user, rooms, c) in cs {
        records.push((user, rooms, c.stop().await));
    }
    records
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
        members.entry(format!("user:{user}")).or_default().push(i);
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
        if rec.connects.len() > 1 {
            v.reconnected += 1;
            if require_resume && rec.resumes == 0 {
                v.problems.push(format!(
                    "{user} reconnected {} times and never resumed",
                    rec.connects.len() - 1
                ));
            }
        }
        v.resumes += rec.resumes;
        v.duplicates_dropped += rec.duplicates;
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
