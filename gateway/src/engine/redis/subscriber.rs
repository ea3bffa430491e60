//! The pub/sub side of the Redis engine on one server (mode single, or the master
//! Sentinel names): one task owns the dedicated pub/sub connection, subscribes to the
//! node-wide inbox channel and to a room channel while this node has local members (and
//! for a linger after the last one left: [`sub_linger`](super::sub_linger)), hands every message to
//! the hub ([`Delivery`]), and after a reconnect re-subscribes and fills the gap from
//! history before passing on live traffic again (connections drop what they already wrote
//! by seq). A Redis Cluster has its own loop ([`sharded`](super::sharded)); both take the
//! same commands through [`Handle`].
//!
//! Every call into Redis here has a deadline ([`OP_TIMEOUT`]) and the connection is pinged
//! every second: a Redis that stops answering (a black hole: no reset, no reply) turns
//! into a reconnect loop and refused subscriptions within seconds, never a hang.

use super::delivery::Delivery;
use super::fast_path::FastPath;
use super::shared::{Shared, OP_TIMEOUT};
use super::sub_linger::SubLinger;
use super::PUBSUB_DOWN_SINCE_START;
use crate::engine::{EngineError, HistoryPage};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often the pub/sub connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(1);
pub(super) enum Cmd {
    Subscribe(String, Reply),
    Unsubscribe(String, Reply),
}

/// Where the caller of a subscription change waits for its outcome (and a subscription's
/// caller for the head read meanwhile, if any: [`Top`](super::delivery::Top)).
pub(super) type Reply = oneshot::Sender<Result<Option<HistoryPage>, EngineError>>;

/// Sends subscription changes to the subscriber task.
pub(crate) struct Handle {
    pub(super) tx: mpsc::UnboundedSender<Cmd>,
    /// Rooms whose subscription Redis has confirmed (the fast path for later joiners).
    active: Arc<FastPath>,
    /// Rooms left by their last local member, still subscribed for a while.
    linger: Arc<SubLinger>,
}

pub(super) fn gone() -> EngineError {
    EngineError::Unavailable("redis subscriber stopped".into())
}

pub(super) fn too_slow() -> EngineError {
    EngineError::Unavailable("redis pub/sub did not answer in time".into())
}

impl Handle {
    /// Subscribes this node to a room channel; returns once Redis has confirmed it, so a
    /// joiner that reads history afterwards cannot miss a message in between. Every
    /// joiner calls this, not only the first: a second joiner must wait too while the
    /// first one's subscription is still on its way. Bounded: the task may be busy (a
    /// reconnect, a gap fill), so the wait has a deadline of its own.
    pub(crate) async fn subscribe(&self, room: &str) -> Result<Option<HistoryPage>, EngineError> {
        self.linger.release(room);
        if self.active.contains(room) {
            return Ok(None);
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

    /// Unsubscribes this node from a room channel (bounded like `subscribe`): after the
    /// subscription linger ([`sub_linger`](super::sub_linger)) unless it is full, at once for an inbox.
    pub(crate) async fn unsubscribe(&self, room: &str) -> Result<(), EngineError> {
        if !crate::protocol::is_inbox(room) && self.linger.hold(room) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Unsubscribe(room.to_string(), tx))
            .map_err(|_| gone())?;
        match tokio::time::timeout(OP_TIMEOUT * 2, rx).await {
            Ok(reply) => reply.map_err(|_| gone())?.map(drop),
            Err(_) => Err(too_slow()),
        }
    }
}

/// Starts the subscriber task of the mode (and the task that repairs messages of a
/// reused epoch).
pub(crate) fn spawn(shared: Arc<Shared>, up: Arc<AtomicBool>, stop: CancellationToken) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (repair_tx, repair_rx) = mpsc::unbounded_channel();
    let active = Arc::new(FastPath::default());
    let delivery = Delivery::new(shared.clone(), active.clone(), repair_tx);
    if shared.backend.is_cluster() {
        tokio::spawn(super::sharded::run(
            shared.clone(),
            delivery,
            up,
            stop.clone(),
            rx,
        ));
    } else {
        let task = Task {
            shared: shared.clone(),
            up,
            stop: stop.clone(),
            delivery,
        };
        tokio::spawn(task.run(rx));
    }
    tokio::spawn(super::repair::repair(shared, repair_rx, stop.clone()));
    let linger = Arc::new(SubLinger::default());
    tokio::spawn(super::sub_linger::run(
        Arc::downgrade(&linger),
        tx.downgrade(),
        stop,
    ));
    Handle { tx, active, linger }
}

struct Task {
    shared: Arc<Shared>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
    delivery: Delivery,
}

type Sink = redis::aio::PubSubSink;

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let stop = self.stop.clone();
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            // Sentinel mode: the master as last found (it changes with a failover).
            let generation = self.shared.generation.load(Ordering::Relaxed);
            let client = self.shared.backend.pubsub_client();
            let connect = async {
                match client {
                    Some(c) => tokio::time::timeout(OP_TIMEOUT, c.get_async_pubsub())
                        .await
                        .map_err(|_| "no answer in time".to_string())?
                        .map_err(|e| e.to_string()),
                    None => Err("no redis master known yet".to_string()),
                }
            };
            let pubsub = tokio::select! {
                _ = stop.cancelled() => return,
                p = connect => p,
            };
            let pubsub = match pubsub {
                Ok(p) => p,
                Err(why) => {
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
            // The node-wide inbox channel and every room this node delivers.
            let mut channels = self.shared.keys.inbox_channels();
            channels.extend(self.delivery.room_channels());
            let resubscribed = tokio::time::timeout(OP_TIMEOUT, sink.subscribe(channels)).await;
            if !matches!(resubscribed, Ok(Ok(()))) {
                tracing::warn!("redis (re-)subscribe failed");
                if !self.refuse_while_down(&mut rx, backoff).await {
                    return;
                }
                continue;
            }
            if connected_before {
                self.shared.reconnects.inc();
                self.delivery.fill_all().await;
                tracing::info!(
                    rooms = self.delivery.len(),
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
                        // Gap fills that failed since the reconnect, tried again.
                        self.delivery.fill_held().await;
                        if self.shared.generation.load(Ordering::Relaxed) != generation {
                            tracing::warn!("redis master changed (sentinel): moving pub/sub to it");
                            break;
                        }
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
                            if !self.commands(&mut sink, cmd, &mut rx).await {
                                break;
                            }
                        }
                    },
                    msg = stream.next() => match msg {
                        None => break,
                        Some(msg) => self.delivery.dispatch(msg.get_channel_name(), msg.get_payload_bytes()).await,
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
                    Some(cmd) => self.refuse(cmd),
                }
            }
        }
    }

    /// Answers a change while Redis is unreachable: no subscription, and a room left by
    /// everyone is dropped (its subscription is not made again with the connection).
    fn refuse(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Subscribe(_, reply) => {
                let _ = reply.send(Err(EngineError::Unavailable("redis is unreachable".into())));
            }
            Cmd::Unsubscribe(room, reply) => {
                self.delivery.remove_unused(&room);
                let _ = reply.send(Ok(None));
            }
        }
    }

    /// Runs `first` and the subscription changes queued behind it (up to [`BATCH`]) with
    /// one SUBSCRIBE and one UNSUBSCRIBE for all of them, and their rooms' tops read
    /// meanwhile: a churn of joins and leaves costs a round trip per batch, not per join
    /// (one at a time, the round trips of this one task capped the node's joins per
    /// second). Changes are applied in order: a room both subscribed and unsubscribed in
    /// one batch splits it. False when the connection must be replaced.
    async fn commands(
        &mut self,
        sink: &mut Sink,
        first: Cmd,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
    ) -> bool {
        let mut batch = Batch::default();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(cmd) = next.take() {
            taken += 1;
            if batch.conflicts(&cmd) && !self.flush(sink, &mut batch).await {
                self.refuse(cmd);
                return false;
            }
            self.stage(&mut batch, cmd);
            if taken < BATCH {
                next = rx.try_recv().ok();
            }
        }
        self.flush(sink, &mut batch).await
    }

    /// Answers what needs no Redis command at once and stages the rest.
    fn stage(&mut self, batch: &mut Batch, cmd: Cmd) {
        match cmd {
            Cmd::Subscribe(room, reply) => {
                if self.delivery.has(&room) {
                    let _ = reply.send(Ok(None));
                } else if let Some((_, waiting)) =
                    batch.subscribe.iter_mut().find(|(r, _)| *r == room)
                {
                    waiting.push(reply);
                } else {
                    batch.subscribe.push((room, vec![reply]));
                }
            }
            Cmd::Unsubscribe(room, reply) => {
                // A joiner may have arrived since the last one left: keep it then.
                if !self.delivery.remove_unused(&room) {
                    let _ = reply.send(Ok(None));
                    return;
                }
                if crate::protocol::is_inbox(&room) {
                    // Carried by the node-wide inbox channel: no Redis command.
                    let _ = reply.send(Ok(None));
                    return;
                }
                batch.unsubscribe.push((room, reply));
            }
        }
    }

    /// Sends the staged SUBSCRIBE and UNSUBSCRIBE and answers their callers; false when
    /// the connection must be replaced.
    async fn flush(&mut self, sink: &mut Sink, batch: &mut Batch) -> bool {
        let subscribe = std::mem::take(&mut batch.subscribe);
        let unsubscribe = std::mem::take(&mut batch.unsubscribe);
        let mut ok = true;
        if !subscribe.is_empty() {
            // An inbox is carried by the node-wide inbox channel: no channel of its own.
            let channels: Vec<String> = subscribe
                .iter()
                .filter(|(r, _)| !crate::protocol::is_inbox(r))
                .map(|(r, _)| self.shared.keys.channel(r))
                .collect();
            let tops = self
                .delivery
                .tops(subscribe.iter().map(|(r, _)| r.clone()).collect());
            let subscribed = async {
                if channels.is_empty() {
                    return Ok(());
                }
                match tokio::time::timeout(OP_TIMEOUT, sink.subscribe(channels)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(self.shared.fail_pubsub(&e)),
                    Err(_) => Err(too_slow()),
                }
            };
            let (subscribed, tops) = futures_util::future::join(subscribed, tops).await;
            ok = subscribed.is_ok();
            // The inboxes are in place either way (their channel is subscribed again with
            // the connection); rooms only once Redis confirmed their channels.
            let (rooms, inboxes): (Vec<_>, Vec<_>) = subscribe
                .into_iter()
                .zip(tops)
                .partition(|((r, _), _)| !crate::protocol::is_inbox(r));
            for ((_, waiting), (room, top)) in inboxes {
                let head = self.delivery.start(&room, top);
                for reply in waiting {
                    let _ = reply.send(Ok(head.clone()));
                }
            }
            for ((_, waiting), (room, top)) in rooms {
                if subscribed.is_ok() {
                    self.delivery.start(&room, top);
                }
                for reply in waiting {
                    let _ = reply.send(subscribed.clone().map(|()| None));
                }
            }
        }
        if !unsubscribe.is_empty() {
            let channels: Vec<String> = unsubscribe
                .iter()
                .map(|(r, _)| self.shared.keys.channel(r))
                .collect();
            let done = tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(channels)).await;
            // Unsubscribing from a dead connection is moot: report success.
            for (_, reply) in unsubscribe {
                let _ = reply.send(Ok(None));
            }
            ok &= matches!(done, Ok(Ok(())));
        }
        ok
    }
}

/// Most subscription changes taken into one batch (by both subscribers).
pub(super) const BATCH: usize = 256;

/// Subscription changes staged for one SUBSCRIBE and one UNSUBSCRIBE.
#[derive(Default)]
struct Batch {
    /// Rooms (and inboxes) to subscribe, with the callers waiting for each.
    subscribe: Vec<(String, Vec<Reply>)>,
    /// Rooms to unsubscribe, with their callers.
    unsubscribe: Vec<(String, Reply)>,
}

impl Batch {
    /// Whether `cmd` concerns a room staged the other way (the batch is sent first).
    fn conflicts(&self, cmd: &Cmd) -> bool {
        match cmd {
            Cmd::Subscribe(room, _) => self.unsubscribe.iter().any(|(r, _)| r == room),
            Cmd::Unsubscribe(room, _) => self.subscribe.iter().any(|(r, _)| r == room),
        }
    }
}

impl Shared {
    /// Counts and logs a pub/sub failure and maps it (the connection is replaced by the
    /// caller).
    pub(super) fn fail_pubsub(&self, e: &redis::RedisError) -> EngineError {
        self.errors.inc();
        EngineError::Unavailable(self.note_failure("redis pub/sub", e).told.into())
    }
}
