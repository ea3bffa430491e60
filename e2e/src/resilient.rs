//! A reference client that behaves as the protocol docs ask real clients to: reconnect
//! with exponential backoff and full jitter, honour `goaway`, `resume` with its last
//! positions, retry unacknowledged sends with the same `msg_id`, wait at least
//! `Retry-After` after a 503, and drop duplicates by (room, seq). It records what it saw so
//! tests can check for loss, gaps and duplicates.

use crate::client::{Client, Upgrade};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// How a client proves who it is.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// `?user=NAME` (gateways in insecure dev mode).
    Insecure,
    /// A fresh HS256 JWT (`Authorization: Bearer`) on every connection attempt, as a real
    /// client refreshes its token before reconnecting.
    Hs256 {
        /// The gateways' shared secret.
        secret: String,
        /// Their `auth.jwt.audience`.
        audience: String,
    },
}

/// What a client should do.
#[derive(Clone)]
pub struct Plan {
    /// User id (the JWT `sub`, or `?user=` in insecure dev mode).
    pub user: String,
    /// Gateway base URLs (`ws://host:port/ws`); reconnects go round-robin.
    pub urls: Vec<String>,
    /// Rooms to join.
    pub rooms: Vec<String>,
    /// Send one message (to the rooms in turn, and every third one as a DM) this often.
    pub send_every: Option<Duration>,
    /// Users to send DMs to.
    pub dm_to: Vec<String>,
    /// Maximum reconnect backoff.
    pub max_backoff: Duration,
}

/// What a client observed.
#[derive(Debug, Default)]
pub struct Record {
    /// Accepted (deduplicated) messages per room: seqs of the current epoch.
    pub received: BTreeMap<String, BTreeSet<u64>>,
    /// Messages seen again (dropped by (room, seq)).
    pub duplicates: u64,
    /// Accepted messages per room by `msg_id`: one sender id must map to one seq.
    pub msg_ids: BTreeMap<String, BTreeMap<String, u64>>,
    /// (room, msg_id, first seq, other seq): one message stored twice (a retried send the
    /// server did not deduplicate).
    pub twice: Vec<(String, String, u64, u64)>,
    /// (room, expected seq, got seq) where a seq was skipped.
    pub gaps: Vec<(String, u64, u64)>,
    /// Rooms a resume reported as not recovered.
    pub not_recovered: Vec<String>,
    /// Acknowledged sends: (room, seq).
    pub acked: Vec<(String, u64)>,
    /// When the server closed or dropped the connection.
    pub disconnects: Vec<Instant>,
    /// When an upgrade succeeded (the first included).
    pub connects: Vec<(Instant, std::time::SystemTime)>,
    /// Successful resumes.
    pub resumes: u64,
    /// Resumes that failed: the error reply, or why there was none (the last 5).
    pub resume_failures: Vec<String>,
    /// Upgrades refused with 503.
    pub refused: u64,
    /// The `Retry-After` of every 503, in seconds (None: the header was missing).
    pub retry_after: Vec<Option<u64>>,
    /// `goaway` frames received.
    pub goaways: u64,
    /// Connections the server ended (closed or dropped) without a `goaway` first.
    pub ended_without_goaway: u64,
    /// Replies whose `ref` is no command this client has in flight.
    pub stray_replies: u64,
    /// Whether the initial joins are done.
    pub ready: bool,
    /// The room's top seq when first joined: later messages must all arrive.
    pub joined_at: BTreeMap<String, u64>,
    /// Whether the client is connected right now (upgraded: its resume may be pending).
    pub connected: bool,
    /// Whether the client is back in its rooms on its current connection: joined them, or
    /// resumed after a reconnect. Until then it cannot have what was sent while it was
    /// away; a stop leaves the flag as it was, so a verdict can tell.
    pub in_session: bool,
}

/// A running reference client.
pub struct Resilient {
    /// Its observations.
    pub record: Arc<Mutex<Record>>,
    quiet: CancellationToken,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Resilient {
    /// Starts the client task (insecure dev mode: `?user=`).
    pub fn spawn(plan: Plan) -> Resilient {
        Self::spawn_with(plan, Credentials::Insecure)
    }

    /// Starts the client task, authenticating with `credentials`.
    pub fn spawn_with(plan: Plan, credentials: Credentials) -> Resilient {
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = CancellationToken::new();
        let quiet = CancellationToken::new();
        let task = tokio::spawn(run(
            plan,
            credentials,
            record.clone(),
            quiet.clone(),
            stop.clone(),
        ));
        Resilient {
            record,
            quiet,
            stop,
            task,
        }
    }

    /// Stops sending new messages (an unacknowledged one is still retried); keeps
    /// receiving, so a test can let traffic settle before [`stop`](Self::stop).
    pub fn stop_sending(&self) {
        self.quiet.cancel();
    }

    /// Stops sending and closes. A panic of the client task (a broken guarantee it
    /// checks, such as a second reply to one command) fails the caller.
    pub async fn stop(self) -> Arc<Mutex<Record>> {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        self.record
    }

    /// Whether the client task ended before [`stop`](Self::stop): it panicked (or was
    /// given a URL it cannot use).
    pub fn crashed(&self) -> bool {
        self.task.is_finished() && !self.stop.is_cancelled()
    }

    /// Reads the record.
    pub fn with<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&self.record.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct State {
    /// room -> (epoch, last seq accepted).
    positions: BTreeMap<String, (String, u64)>,
    token: Option<String>,
    /// Unacknowledged send, retried with the same msg_id after a reconnect.
    pending: Option<Value>,
    counter: u64,
}

/// An upgrade request for `url` carrying `credentials` for `user`.
fn request(
    url: &str,
    user: &str,
    credentials: &Credentials,
) -> Option<tokio_tungstenite::tungstenite::handshake::client::Request> {
    match credentials {
        Credentials::Insecure => format!("{url}?user={user}").into_client_request().ok(),
        Credentials::Hs256 { secret, audience } => {
            let mut req = url.into_client_request().ok()?;
            let token = crate::jwt::hs256_for(secret, audience, user, 300);
            let value = format!("Bearer {token}").parse().ok()?;
            req.headers_mut().insert("authorization", value);
            Some(req)
        }
    }
}

async fn run(
    plan: Plan,
    credentials: Credentials,
    record: Arc<Mutex<Record>>,
    quiet: CancellationToken,
    stop: CancellationToken,
) {
    let rec =
        |f: &mut dyn FnMut(&mut Record)| f(&mut record.lock().unwrap_or_else(|p| p.into_inner()));
    let mut st = State {
        positions: BTreeMap::new(),
        token: None,
        pending: None,
        counter: 0,
    };
    let mut attempt: u32 = 0;
    let mut next_url = rand::random::<u32>() as usize % plan.urls.len().max(1);
    let mut hint: Option<Duration> = None;
    while !stop.is_cancelled() {
        if attempt > 0 || hint.is_some() {
            // Full jitter: uniform in [0, min(max, base * 2^attempt)], or the server's hint.
            let wait = hint.take().unwrap_or_else(|| {
                let cap = Duration::from_millis(100)
                    .saturating_mul(1 << attempt.min(10))
                    .min(plan.max_backoff);
                cap.mul_f64(rand::random::<f64>())
            });
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(wait) => {} }
        }
        let url = &plan.urls[next_url % plan.urls.len()];
        next_url += 1;
        let Some(req) = request(url, &plan.user, &credentials) else {
            return;
        };
        let mut c = match tokio::time::timeout(Duration::from_secs(10), Client::upgrade(req)).await
        {
            Ok(Upgrade::Ok(c, _)) => *c,
            Ok(Upgrade::Refused(refusal)) => {
                attempt += 1;
                if refusal.status == 503 {
                    let after = refusal.retry_after();
                    rec(&mut |r| {
                        r.refused += 1;
                        r.retry_after.push(after);
                    });
                    // Wait at least Retry-After (plus jitter, so that clients refused in
                    // the same second do not return in step).
                    if let Some(secs) = after {
                        let jitter = Duration::from_millis(100).mul_f64(rand::random::<f64>());
                        hint = Some(Duration::from_secs(secs) + jitter);
                    }
                }
                continue;
            }
            Ok(Upgrade::Failed(_)) | Err(_) => {
                attempt += 1;
                continue;
            }
        };
        rec(&mut |r| {
            r.connects
                .push((Instant::now(), std::time::SystemTime::now()));
            r.connected = true;
        });
        attempt = 0;
        let new_token = c.resume_token();
        let ok = if let Some(token) = st.token.take() {
            resume(&mut c, &plan, &mut st, &record, token).await
        } else {
            join_all(&mut c, &plan, &mut st, &record).await
        };
        st.token = Some(new_token);
        if ok {
            rec(&mut |r| r.in_session = true);
            hint = session(&mut c, &plan, &mut st, &record, &quiet, &stop).await;
        }
        let stopped = stop.is_cancelled();
        rec(&mut |r| {
            r.disconnects.push(Instant::now());
            r.connected = false;
            r.in_session &= stopped;
        });
    }
}

async fn join_all(c: &mut Client, plan: &Plan, st: &mut State, record: &Mutex<Record>) -> bool {
    for room in &plan.rooms {
        // The connection may be moved (goaway) before the reply: reconnect then.
        let Some(r) = c.try_request(json!({"type": "join", "room": room})).await else {
            return false;
        };
        if r["type"] != "ok" {
            return false;
        }
        let epoch = r["epoch"].as_str().unwrap_or_default().to_string();
        let top = r["seq"].as_u64().unwrap_or(0);
        st.positions.insert(room.clone(), (epoch, top));
        record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .joined_at
            .insert(room.clone(), top);
    }
    // The inbox: start from whatever the server replays.
    record.lock().unwrap_or_else(|p| p.into_inner()).ready = true;
    true
}

async fn resume(
    c: &mut Client,
    _plan: &Plan,
    st: &mut State,
    record: &Mutex<Record>,
    token: String,
) -> bool {
    let positions: serde_json::Map<String, Value> = st
        .positions
        .iter()
        .map(|(room, (epoch, seq))| (room.clone(), json!({"seq": seq, "epoch": epoch})))
        .collect();
    let resume = json!({"type": "resume", "resume_token": token, "positions": positions});
    let failed = |why: String| {
        let mut rec = record.lock().unwrap_or_else(|p| p.into_inner());
        if rec.resume_failures.len() == 5 {
            rec.resume_failures.remove(0);
        }
        rec.resume_failures.push(why);
        false
    };
    let Some(r) = c.try_request(resume).await else {
        return failed("no reply (connection ended or 10 s passed)".into());
    };
    if r["type"] != "ok" {
        return failed(r.to_string());
    }
    let mut rec = record.lock().unwrap_or_else(|p| p.into_inner());
    rec.resumes += 1;
    if let Some(rooms) = r["rooms"].as_object() {
        for (room, status) in rooms {
            if status["recovered"] != true {
                rec.not_recovered.push(room.clone());
            }
        }
    }
    true
}

/// Runs until the connection ends; returns the server's reconnect hint, if any.
async fn session(
    c: &mut Client,
    plan: &Plan,
    st: &mut State,
    record: &Mutex<Record>,
    quiet: &CancellationToken,
    stop: &CancellationToken,
) -> Option<Duration> {
    let mut hint = None;
    let mut told = false;
    let mut tick = plan.send_every.map(tokio::time::interval);
    let mut in_flight: Option<u64> = None;
    // A send that fails (the gateway was killed under it) ends the connection as a
    // failed read does; the pending command is sent again on the next one.
    let ended = |record: &Mutex<Record>, told: bool| {
        if !told {
            record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .ended_without_goaway += 1;
        }
    };
    if let Some(p) = st.pending.clone() {
        let Some(id) = c.try_send_cmd(p).await else {
            ended(record, told);
            return hint;
        };
        in_flight = Some(id);
    }
    loop {
        let tick_fut = async {
            match tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tick_fut, if in_flight.is_none() && !quiet.is_cancelled() => {
                st.counter += 1;
                let n = st.counter;
                let room = if n % 3 == 0 && !plan.dm_to.is_empty() {
                    chat_gateway::protocol::inbox_of(&plan.dm_to[(n as usize / 3) % plan.dm_to.len()])
                } else {
                    plan.rooms[(n as usize) % plan.rooms.len()].clone()
                };
                let cmd = json!({"type": "send", "room": room, "msg_id": format!("{}-{n}", plan.user), "body": {"n": n}});
                st.pending = Some(cmd.clone());
                let Some(id) = c.try_send_cmd(cmd).await else {
                    ended(record, told);
                    return hint;
                };
                in_flight = Some(id);
            }
            frame = c.recv() => {
                let Some(f) = frame else {
                    ended(record, told);
                    return hint;
                };
                match f["type"].as_str() {
                    Some("msg") => accept(&f, st, record),
                    Some("goaway") => {
                        told = true;
                        record.lock().unwrap_or_else(|p| p.into_inner()).goaways += 1;
                        hint = f["reconnect_after_ms"].as_u64().map(Duration::from_millis);
                    }
                    Some("ok") if in_flight.is_some() && f["ref"].as_u64() == in_flight => {
                        in_flight = None;
                        if let Some(p) = st.pending.take() {
                            let room = p["room"].as_str().unwrap_or_default().to_string();
                            let seq = f["seq"].as_u64().unwrap_or(0);
                            record.lock().unwrap_or_else(|p| p.into_inner()).acked.push((room, seq));
                        }
                    }
                    Some("error") if in_flight.is_some() && f["ref"].as_u64() == in_flight => {
                        in_flight = None; // unavailable etc.: retried on the next tick
                        st.pending = None;
                    }
                    Some("ok" | "error") if !f["ref"].is_null() => {
                        record.lock().unwrap_or_else(|p| p.into_inner()).stray_replies += 1;
                    }
                    _ => {}
                }
            }
        }
    }
}

fn accept(f: &Value, st: &mut State, record: &Mutex<Record>) {
    let room = f["room"].as_str().unwrap_or_default().to_string();
    let seq = f["seq"].as_u64().unwrap_or(0);
    let epoch = f["epoch"].as_str().unwrap_or_default().to_string();
    let mut rec = record.lock().unwrap_or_else(|p| p.into_inner());
    let last = st.positions.get(&room).cloned();
    match last {
        Some((e, last)) if e == epoch => {
            if seq <= last {
                rec.duplicates += 1;
                return;
            }
            if seq != last + 1 {
                rec.gaps.push((room.clone(), last + 1, seq));
            }
        }
        _ => {} // first message of a room (the inbox) or a new epoch
    }
    st.positions.insert(room.clone(), (epoch, seq));
    if let Some(id) = f["msg_id"].as_str() {
        let first = *rec
            .msg_ids
            .entry(room.clone())
            .or_default()
            .entry(id.to_string())
            .or_insert(seq);
        if first != seq {
            rec.twice.push((room.clone(), id.to_string(), first, seq));
        }
    }
    rec.received.entry(room).or_default().insert(seq);
}
