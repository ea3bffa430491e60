//! Traffic through several gateways while Redis is reconfigured under them (slots moved,
//! a master killed, a Sentinel failover), and the check that matters afterwards: every
//! acknowledged message reached every member, or the member was told of a gap by a new
//! epoch. Senders retry an unacknowledged send with the same `msg_id` (dedup makes that
//! safe), as the protocol asks clients to. A position is matched with its `msg_id`: a
//! message delivered at an acknowledged position but carrying another message's id (a seq
//! reused in the same epoch, what the epoch rule prevents) counts as lost.

use crate::Client;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A message position: (room, epoch, seq).
pub type Position = (String, String, u64);

/// Senders and receivers at work.
pub struct Traffic {
    stop: CancellationToken,
    senders: Vec<JoinHandle<SenderLog>>,
    receivers: Vec<(String, Vec<String>, JoinHandle<ReceiverLog>)>,
    /// Acknowledged so far, shared with the senders (for progress checks).
    pub acked: Arc<Mutex<u64>>,
}

#[derive(Default)]
struct SenderLog {
    /// Acknowledged positions and the msg id sent there.
    acked: Vec<(Position, String)>,
    errors: BTreeMap<String, u64>,
    /// The first error reply of each code.
    samples: BTreeMap<String, String>,
}

#[derive(Default)]
struct ReceiverLog {
    /// Delivered positions and the msg id each carried (the first one delivered there).
    got: BTreeMap<Position, String>,
    /// The epoch of the last message delivered per room.
    last_epoch: BTreeMap<String, String>,
    closed: bool,
}

/// What the traffic saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Acknowledged sends.
    pub acked: usize,
    /// Error replies by code (retried with the same msg id).
    pub errors: BTreeMap<String, u64>,
    /// The first error reply of each code (for failure messages).
    pub error_samples: BTreeMap<String, String>,
    /// Acknowledged but not delivered (or another message delivered at its position) to a
    /// member still in that epoch at the end: (member, pos).
    pub lost: Vec<(String, Position)>,
    /// Acknowledged, not delivered, but the member saw the room move on to a new epoch.
    pub signalled: usize,
    /// Those per (member, room, epoch of the message).
    pub signalled_by: BTreeMap<(String, String, String), usize>,
    /// Receivers whose connection ended before the end.
    pub closed: Vec<String>,
    /// Epochs seen per room.
    pub epochs: BTreeMap<String, BTreeSet<String>>,
    /// Messages delivered per (member, room).
    pub delivered: BTreeMap<(String, String), usize>,
}

async fn connect(url: &str, user: &str) -> Client {
    Client::connect(&format!("{url}?user={user}"))
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"))
}

impl Outcome {
    /// Lost messages per (member, room), for a failure message.
    pub fn lost_by_member(&self) -> BTreeMap<(String, String), usize> {
        let mut by = BTreeMap::new();
        for (member, pos) in &self.lost {
            *by.entry((member.clone(), pos.0.clone())).or_insert(0) += 1;
        }
        by
    }
}

impl Traffic {
    /// Starts one receiver per gateway joined to every room, one connection per DM user
    /// (on gateway `i % n`), then one sender per room and per DM user, each on another
    /// gateway than most of its readers, sending every `every`. DM senders stay within a DM
    /// quota only if the gateways run without one (`dmQuota: 0` for `user:`).
    pub async fn start(
        urls: &[String],
        rooms: &[String],
        dm_users: &[String],
        every: Duration,
    ) -> Traffic {
        let stop = CancellationToken::new();
        let mut receivers = Vec::new();
        for (g, url) in urls.iter().enumerate() {
            let name = format!("rx{g}");
            let mut c = connect(url, &name).await;
            for room in rooms {
                c.join(room).await;
            }
            receivers.push((name, rooms.to_vec(), tokio::spawn(receive(c, stop.clone()))));
        }
        for (i, user) in dm_users.iter().enumerate() {
            let c = connect(&urls[i % urls.len()], user).await;
            let inbox = chat_gateway::protocol::inbox_of(user);
            receivers.push((
                user.clone(),
                vec![inbox],
                tokio::spawn(receive(c, stop.clone())),
            ));
        }
        let acked = Arc::new(Mutex::new(0));
        let mut senders = Vec::new();
        let targets = rooms
            .iter()
            .cloned()
            .chain(dm_users.iter().map(|u| chat_gateway::protocol::inbox_of(u)));
        for (i, room) in targets.enumerate() {
            let url = &urls[(i + 1) % urls.len()];
            let name = format!("tx{i}");
            let mut c = connect(url, &name).await;
            if !chat_gateway::protocol::is_inbox(&room) {
                c.join(&room).await; // only members send
            }
            senders.push(tokio::spawn(send(
                c,
                name,
                room,
                every,
                stop.clone(),
                acked.clone(),
            )));
        }
        Traffic {
            stop,
            senders,
            receivers,
            acked,
        }
    }

    /// Acknowledged sends so far.
    pub fn acked(&self) -> u64 {
        *self.acked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `more` further sends were acknowledged (the service works again).
    pub async fn wait_for_progress(&self, more: u64, within: Duration) {
        let start = self.acked();
        let deadline = tokio::time::Instant::now() + within;
        while self.acked() < start + more {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no progress: {} acknowledged in {within:?}",
                self.acked() - start
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops sending, lets delivery settle, and compares.
    pub async fn finish(self) -> Outcome {
        self.stop.cancel();
        let mut out = Outcome::default();
        let mut acked = Vec::new();
        for s in self.senders {
            let log = s.await.unwrap_or_default();
            acked.extend(log.acked);
            for (k, v) in log.errors {
                *out.errors.entry(k).or_insert(0) += v;
            }
            for (k, v) in log.samples {
                out.error_samples.entry(k).or_insert(v);
            }
        }
        out.acked = acked.len();
        // Each room has one sender, whose acknowledgements come in order: the order in
        // which a room's epochs first appear there is the order they followed each other.
        let mut rank: BTreeMap<(String, String), usize> = BTreeMap::new();
        for ((room, epoch, _), _) in &acked {
            let next = rank.keys().filter(|(r, _)| r == room).count();
            rank.entry((room.clone(), epoch.clone())).or_insert(next);
        }
        for (name, rooms, r) in self.receivers {
            let log = r.await.unwrap_or_default();
            if log.closed {
                out.closed.push(name.clone());
            }
            for (room, epoch, _) in log.got.keys() {
                *out.delivered
                    .entry((name.clone(), room.clone()))
                    .or_insert(0) += 1;
                out.epochs
                    .entry(room.clone())
                    .or_default()
                    .insert(epoch.clone());
            }
            for (pos, id) in acked.iter().filter(|(p, _)| rooms.contains(&p.0)) {
                if log.got.get(pos) == Some(id) {
                    continue;
                }
                // Not delivered: fine only if this member's room went on in a later epoch
                // (the gap is signalled, clients re-sync from history).
                let at = |e: &String| rank.get(&(pos.0.clone(), e.clone())).copied();
                let moved_on = log
                    .last_epoch
                    .get(&pos.0)
                    .is_some_and(|e| at(e) > at(&pos.1));
                if moved_on {
                    out.signalled += 1;
                    *out.signalled_by
                        .entry((name.clone(), pos.0.clone(), pos.1.clone()))
                        .or_insert(0) += 1;
                } else {
                    out.lost.push((name.clone(), pos.clone()));
                }
            }
        }
        out
    }
}

/// How long receivers keep reading after the senders stop. A gateway that lost a node
/// subscribes again only once the failover is done (node timeout, election, the client's
/// slot refresh) and then fills the gap from history: messages published meanwhile are
/// late, not lost, and must be given the time to arrive before anything is judged. CI saw
/// 3 s end the run while one gateway of three was still waiting for the promoted replica.
const SETTLE: Duration = Duration::from_secs(10);

/// Reads `msg` frames until stopped; after the stop, drains what is still on its way.
async fn receive(mut c: Client, stop: CancellationToken) -> ReceiverLog {
    let mut log = ReceiverLog::default();
    let mut settle = None;
    loop {
        let frame = if let Some(deadline) = settle {
            match tokio::time::timeout_at(deadline, c.recv()).await {
                Ok(f) => f,
                Err(_) => return log,
            }
        } else {
            tokio::select! {
                _ = stop.cancelled() => {
                    settle = Some(tokio::time::Instant::now() + SETTLE);
                    continue;
                }
                f = c.recv() => f,
            }
        };
        let Some(f) = frame else {
            log.closed = settle.is_none();
            return log;
        };
        if f["type"] == "msg" {
            let pos = (
                f["room"].as_str().unwrap_or_default().to_string(),
                f["epoch"].as_str().unwrap_or_default().to_string(),
                f["seq"].as_u64().unwrap_or(0),
            );
            log.last_epoch.insert(pos.0.clone(), pos.1.clone());
            let id = f["msg_id"].as_str().unwrap_or_default().to_string();
            log.got.entry(pos).or_insert(id);
        }
    }
}

/// Sends numbered messages to `room` until stopped, each retried with its msg id until
/// acknowledged (at most 300 tries, 100 ms apart).
async fn send(
    mut c: Client,
    name: String,
    room: String,
    every: Duration,
    stop: CancellationToken,
    acked: Arc<Mutex<u64>>,
) -> SenderLog {
    let mut log = SenderLog::default();
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let id = format!("{name}-{n}");
        let cmd = json!({"type": "send", "room": room, "msg_id": id, "body": {"n": n}});
        for _ in 0..300 {
            let reply =
                tokio::time::timeout(Duration::from_secs(5), c.try_request(cmd.clone())).await;
            let Ok(Some(r)) = reply else {
                *log.errors.entry("no reply".into()).or_insert(0) += 1;
                return log; // the connection is gone: nothing more to send on
            };
            if r["type"] == "ok" {
                let pos = (
                    room.clone(),
                    r["epoch"].as_str().unwrap_or_default().to_string(),
                    r["seq"].as_u64().unwrap_or(0),
                );
                log.acked.push((pos, id.clone()));
                *acked.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                break;
            }
            let code = r["code"].as_str().unwrap_or("?").to_string();
            log.samples
                .entry(code.clone())
                .or_insert_with(|| r.to_string());
            *log.errors.entry(code).or_insert(0) += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(every).await;
    }
    log
}

impl Outcome {
    /// The failover tests' verdict: no `internal` error, no dropped connection, nothing
    /// acknowledged and silently missing; the gateways' log tails are printed when not.
    pub fn assert_nothing_lost(&self, gws: &crate::gateways::Gateways) {
        if !self.lost.is_empty() || !self.closed.is_empty() || self.errors.contains_key("internal")
        {
            for (i, gw) in gws.procs.iter().enumerate() {
                eprintln!("--- gateway {i} log (tail)\n{}", gw.log_tail());
            }
        }
        // Redis refusing a command it did not run (a slot mid-migration, a demoted master)
        // is `unavailable`, which clients retry; `internal` would be a bug.
        assert!(
            !self.errors.contains_key("internal"),
            "internal errors: {:?}, e.g. {:?}",
            self.errors,
            self.error_samples
        );
        assert!(
            self.closed.is_empty(),
            "connections dropped: {:?}",
            self.closed
        );
        assert!(
            self.lost.is_empty(),
            "acknowledged, never delivered, no new epoch: {} e.g. {:?}; lost per member {:?}, \
             delivered {:?}",
            self.lost.len(),
            &self.lost[..self.lost.len().min(5)],
            self.lost_by_member(),
            self.delivered
        );
    }
}
