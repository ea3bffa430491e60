//! The pub/sub side of the Redis engine: one task owns the dedicated pub/sub connection,
//! subscribes to a room channel while this node has local members, hands every message
//! to the hub, and after a reconnect re-subscribes and fills the gap from history before
//! passing on live traffic again (connections drop what they already wrote by seq).
//!
//! Every call into Redis here has a deadline ([`OP_TIMEOUT`]) and the connection is pinged
//! every second: a Redis that stops answering (a black hole: no reset, no reply) turns
//! into a reconnect loop and refused subscriptions within seconds, never a hang.

use super::payload::{frame_ts, parse_payload, Payload};
use super::shared::{lock, Shared, OP_TIMEOUT};
use super::PUBSUB_DOWN_SINCE_START;
use crate::engine::{EngineError, Envelope, HistoryQuery};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often the pub/sub connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(1);
/// A gap fill reads history in pages of at most this many messages and bytes.
const FILL_MESSAGES: usize = 500;
const FILL_BYTES: usize = 512 * 1024;

enum Cmd {
    Subscribe(String, oneshot::Sender<Result<(), EngineError>>),
    Unsubscribe(String, oneshot::Sender<Result<(), EngineError>>),
}

/// Sends subscription changes to the subscriber task.
pub(crate) struct Handle {
    tx: mpsc::UnboundedSender<Cmd>,
    /// Rooms whose subscription Redis has confirmed (the fast path for later joiners).
    active: Arc<std::sync::Mutex<HashSet<String>>>,
}

fn gone() -> EngineError {
    EngineError::Unavailable("redis subscriber stopped".into())
}

fn too_slow() -> EngineError {
    EngineError::Unavailable("redis pub/sub did not answer in time".into())
}

impl Handle {
    /// Subscribes this node to a room channel; returns once Redis has confirmed it, so a
    /// joiner that reads history afterwards cannot miss a message in between. Every
    /// joiner calls this, not only the first: a second joiner must wait too while the
    /// first one's subscription is still on its way. Bounded: the task may be busy (a
    /// reconnect, a gap fill), so the wait has a deadline of its own.
    pub(crate) async fn subscribe(&self, room: &str) -> Result<(), EngineError> {
        if lock(&self.active).contains(room) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Subscribe(room.to_string(), tx))
            .map_err(|_| gone())?;
        match tokio::time::timeout(OP_TIMEOUT * 2, rx).await {
            Ok(reply) => reply.map_err(|_| gone())?,
            Err(_) => Err(too_slow()),
        }
    }

    /// Unsubscribes this node from a room channel (bounded like `subscribe`).
    pub(crate) async fn unsubscribe(&self, room: &str) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Unsubscribe(room.to_string(), tx))
            .map_err(|_| gone())?;
        match tokio::time::timeout(OP_TIMEOUT * 2, rx).await {
            Ok(reply) => reply.map_err(|_| gone())?,
            Err(_) => Err(too_slow()),
        }
    }
}

/// Starts the subscriber task (and the task that repairs messages of a reused epoch).
pub(crate) fn spawn(
    client: redis::Client,
    shared: Arc<Shared>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (repair_tx, repair_rx) = mpsc::unbounded_channel();
    let active = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let task = Task {
        client,
        shared: shared.clone(),
        up,
        stop: stop.clone(),
        active: active.clone(),
        rooms: HashMap::new(),
        repair: repair_tx,
    };
    tokio::spawn(task.run(rx));
    tokio::spawn(super::repair::repair(shared, repair_rx, stop));
    Handle { tx, active }
}

/// What this node last saw of a subscribed room on the channel.
#[derive(Clone, Default)]
struct Seen {
    epoch: Option<Arc<str>>,
    /// Where a gap fill after a reconnect starts.
    seq: u64,
    /// Highest seq of the epoch this node delivered (0: none yet).
    delivered: u64,
    /// Highest append time of those (Redis' clock).
    ts: u64,
}

struct Task {
    client: redis::Client,
    shared: Arc<Shared>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
    active: Arc<std::sync::Mutex<HashSet<String>>>,
    rooms: HashMap<String, Seen>,
    repair: mpsc::UnboundedSender<Arc<Envelope>>,
}

type Sink = redis::aio::PubSubSink;

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let stop = self.stop.clone();
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            let connect = tokio::time::timeout(OP_TIMEOUT, self.client.get_async_pubsub());
            let pubsub = tokio::select! {
                _ = stop.cancelled() => return,
                p = connect => p,
            };
            let pubsub = match pubsub {
                Ok(Ok(p)) => p,
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer in time".into(),
                    };
                    tracing::warn!(error = %why, retry_in = ?backoff, "redis pub/sub connect failed");
                    self.shared.errors.inc();
                    if !self.refuse_while_down(&mut rx, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let channels: Vec<String> = self
                .rooms
                .keys()
                .map(|r| self.shared.keys.channel(r))
                .collect();
            if !channels.is_empty() {
                let resubscribed = tokio::time::timeout(OP_TIMEOUT, sink.subscribe(channels)).await;
                if !matches!(resubscribed, Ok(Ok(()))) {
                    tracing::warn!("redis re-subscribe failed");
                    continue;
                }
            }
            if connected_before {
                self.shared.reconnects.inc();
                self.fill_gaps().await;
                tracing::info!(
                    rooms = self.rooms.len(),
                    "redis pub/sub reconnected and re-subscribed"
                );
            }
            connected_before = true;
            backoff = Duration::from_millis(100);
            self.up.store(true, Ordering::Relaxed);
            self.shared.pubsub_down_since.store(0, Ordering::Relaxed);

            let mut ping = tokio::time::interval(PING_EVERY);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ping.tick() => {
                        // A pub/sub connection is otherwise silent: only a ping notices
                        // a Redis that stopped answering.
                        let pong = tokio::time::timeout(OP_TIMEOUT, sink.ping::<redis::Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            self.shared.errors.inc();
                            break;
                        }
                    }
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some(cmd) => {
                            if !self.command(&mut sink, cmd).await {
                                break;
                            }
                        }
                    },
                    msg = stream.next() => match msg {
                        None => break,
                        Some(msg) => self.dispatch(&msg),
                    },
                }
            }
            self.up.store(false, Ordering::Relaxed);
            let _ = self.shared.pubsub_down_since.compare_exchange(
                0,
                crate::engine::now_ms().max(PUBSUB_DOWN_SINCE_START),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tracing::warn!("redis pub/sub connection lost; reconnecting");
        }
    }

    /// Answers subscription changes without Redis for `wait`; false when stopping.
    async fn refuse_while_down(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
        wait: Duration,
    ) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        let stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = &mut sleep => return true,
                cmd = rx.recv() => match cmd {
                    None => return false,
                    Some(Cmd::Subscribe(_, reply)) => {
                        let _ = reply.send(Err(EngineError::Unavailable("redis is unreachable".into())));
                    }
                    Some(Cmd::Unsubscribe(room, reply)) => {
                        if !self.shared.hub.has_subscribers(&room) {
                            self.rooms.remove(&room);
                            lock(&self.active).remove(&room);
                        }
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
    }

    /// Runs one subscription change; false when the connection must be replaced.
    async fn command(&mut self, sink: &mut Sink, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Subscribe(room, reply) => {
                if self.rooms.contains_key(&room) {
                    let _ = reply.send(Ok(()));
                    return true;
                }
                let channel = self.shared.keys.channel(&room);
                match tokio::time::timeout(OP_TIMEOUT, sink.subscribe(channel)).await {
                    Ok(Ok(())) => {
                        let seen = self.current_top(&room).await;
                        lock(&self.active).insert(room.clone());
                        self.rooms.insert(room, seen);
                        let _ = reply.send(Ok(()));
                        true
                    }
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(self.shared.fail_pubsub(&e)));
                        false
                    }
                    Err(_) => {
                        let _ = reply.send(Err(too_slow()));
                        false
                    }
                }
            }
            Cmd::Unsubscribe(room, reply) => {
                // A joiner may have arrived since the last one left: keep it then.
                if self.shared.hub.has_subscribers(&room) {
                    let _ = reply.send(Ok(()));
                    return true;
                }
                self.rooms.remove(&room);
                lock(&self.active).remove(&room);
                let channel = self.shared.keys.channel(&room);
                let done = tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(channel)).await;
                // Unsubscribing from a dead connection is moot: report success.
                let _ = reply.send(Ok(()));
                matches!(done, Ok(Ok(())))
            }
        }
    }

    /// The room's epoch and top now, so a gap after a reconnect can be filled from there.
    async fn current_top(&self, room: &str) -> Seen {
        let mut conn = self.shared.conn();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.shared.keys.meta(room)).arg("epoch").arg("seq");
        match self
            .shared
            .run(cmd.query_async::<(Option<String>, Option<u64>)>(&mut conn))
            .await
        {
            Ok((epoch, seq)) => Seen {
                epoch: epoch.map(Into::into),
                seq: seq.unwrap_or(0),
                delivered: 0,
                ts: 0,
            },
            Err(_) => Seen::default(),
        }
    }

    /// Delivers what was published while the pub/sub connection was down, page by page.
    async fn fill_gaps(&mut self) {
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for room in names {
            let Some(mut seen) = self.rooms.get(&room).cloned() else {
                continue;
            };
            let mut restarted = false;
            loop {
                let q = HistoryQuery {
                    since: Some(seen.seq),
                    before: None,
                    limit: FILL_MESSAGES,
                    max_bytes: FILL_BYTES,
                };
                let page = match self.shared.history(&room, q).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(%room, error = %e, "gap fill failed");
                        break;
                    }
                };
                if seen.epoch.as_ref().is_some_and(|e| *e != page.epoch) && !restarted {
                    // History was lost or a new epoch started: all of the new one is new.
                    restarted = true;
                    seen = Seen {
                        epoch: Some(page.epoch.clone()),
                        ..Seen::default()
                    };
                    continue;
                }
                seen.epoch = Some(page.epoch.clone());
                for env in &page.messages {
                    self.shared.hub.deliver(env);
                    seen.seq = env.seq;
                    seen.delivered = seen.delivered.max(env.seq);
                    seen.ts = seen.ts.max(frame_ts(&env.frame).unwrap_or(0));
                }
                if page.messages.is_empty() {
                    seen.seq = seen.seq.max(page.top); // trimmed meanwhile: nothing to fill
                }
                if !page.more || page.messages.is_empty() {
                    break;
                }
            }
            self.rooms.insert(room, seen);
        }
    }

    /// Hands one pub/sub message to the hub.
    fn dispatch(&mut self, msg: &redis::Msg) {
        let Some(room) = self.shared.keys.room_of_channel(msg.get_channel_name()) else {
            return;
        };
        match parse_payload(msg.get_payload_bytes()) {
            Some(Payload::Presence(frame)) => {
                self.shared.hub.broadcast(room, &frame.to_string().into());
            }
            Some(Payload::Msg {
                seq,
                epoch,
                ts,
                traceparent,
                frame,
            }) => {
                let env = Arc::new(Envelope {
                    room: room.into(),
                    seq,
                    epoch: epoch.into(),
                    ts,
                    traceparent: traceparent.map(Arc::from),
                    frame: frame.to_string().into(),
                });
                if let Some(seen) = self.rooms.get_mut(room) {
                    let same = seen.epoch.as_deref() == Some(epoch);
                    if same && seen.delivered > 0 && seq <= seen.delivered && ts > seen.ts {
                        // A seq this node delivered already, appended after everything it
                        // delivered: the store numbers the epoch again from an older point.
                        // (A message delivered twice after a reconnect is older, not newer.)
                        let _ = self.repair.send(env.clone());
                    }
                    if same {
                        seen.seq = seen.seq.max(seq);
                        seen.delivered = seen.delivered.max(seq);
                        seen.ts = seen.ts.max(ts);
                    } else {
                        *seen = Seen {
                            epoch: Some(env.epoch.clone()),
                            seq,
                            delivered: seq,
                            ts,
                        };
                    }
                }
                self.shared.seen.observe(room, epoch, seq);
                self.shared.hub.deliver(&env);
            }
            Some(Payload::Ephemeral {
                ts,
                traceparent,
                frame,
            }) => {
                // No seq: no position to track, nothing to fill after a gap.
                self.shared.hub.deliver(&Arc::new(Envelope {
                    room: room.into(),
                    seq: 0,
                    epoch: "".into(),
                    ts,
                    traceparent: traceparent.map(Arc::from),
                    frame: frame.to_string().into(),
                }));
            }
            None => {}
        }
    }
}

impl Shared {
    /// Counts a pub/sub failure and maps it (the connection is replaced by the caller).
    fn fail_pubsub(&self, e: &redis::RedisError) -> EngineError {
        self.errors.inc();
        EngineError::Unavailable(format!("redis pub/sub: {e}"))
    }
}
