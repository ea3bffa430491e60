//! The pub/sub side in a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`), so a room's
//! messages travel only within the shard that owns the room's slot. The redis crate's
//! cluster connection (RESP3) routes each `SSUBSCRIBE` to the owner of the channel's slot
//! and hands every push to this task. It does not follow everything by itself, so this
//! task does:
//! - a slot that moves away (`redis-cli --cluster reshard`) makes the old owner send
//!   `sunsubscribe` for its channels: a channel still wanted is subscribed again (the
//!   crate then learns the new owner from `MOVED`);
//! - a node that drops (a killed master) sends `Disconnection`: every channel is
//!   subscribed again, retried until the promoted replica answers. The retries run beside
//!   this loop, not in it: a channel whose node is gone can take seconds per attempt, and
//!   meanwhile the pushes of every other channel must keep flowing;
//! - a channel counts as subscribed only once Redis' confirmation push for it arrives,
//!   never on a command's reply (the crate can hand a reply to the wrong command); a
//!   client that still cannot subscribe everything after seconds of trying is replaced;
//! - every confirmation after a channel's first one means the subscription was made
//!   again, so messages may have been missed (as does a first one that a retry round
//!   brought, long after the join that asked read the room's head): the gap is filled
//!   from history before any later push of the channel is handed on (pushes arrive in
//!   order on one queue); a fill that failed is tried again on a timer until it succeeds
//!   ([`Delivery::fill_held`]);
//! - every master is pinged each second (through the command client, see [`Task::ping`]):
//!   a node that froze or vanished without a reset (a hung host, a partition) sends no
//!   `Disconnection`, and its subscriptions would stay dead on an open socket while the
//!   pod looked ready. An unanswered ping is handled like a `Disconnection`, and the
//!   pub/sub client is replaced if pings stay unanswered (see [`Channels::unanswered`]).

use super::channels::{Channels, Failed, Unanswered};
use super::conn::CONNECT_TIMEOUT;
use super::delivery::Delivery;
use super::shared::{Shared, OP_TIMEOUT};
use super::subscriber::{too_slow, Cmd, Reply, BATCH};
use super::PUBSUB_DOWN_SINCE_START;
use crate::engine::EngineError;
use futures_util::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often channels waiting to be subscribed again are retried.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// At most this many subscriptions are in flight at once (the inbox buckets at start).
const PARALLEL: usize = 32;
/// How often every master is pinged through the pub/sub client.
const PING_EVERY: Duration = Duration::from_secs(1);

struct Task {
    shared: Arc<Shared>,
    delivery: Delivery,
    conn: ClusterConnection,
    /// Which channels are held; the lost ones are retried every [`RETRY_EVERY`].
    channels: Channels,
    up: Arc<AtomicBool>,
    /// Clients replaced so far: a ping's answer counts only for the client it asked.
    renewals: u64,
}

/// Runs the cluster subscriber until stopped.
pub(super) async fn run(
    shared: Arc<Shared>,
    delivery: Delivery,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let (conn, mut pushes) = match connect(&shared) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "redis cluster pub/sub client");
            return;
        }
    };
    let mut task = Task {
        channels: Channels::new(shared.keys.inbox_channels()),
        shared,
        delivery,
        conn,
        up,
        renewals: 0,
    };
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One round of re-subscriptions at a time, reporting back here.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Vec<Attempt>>();
    let mut resubscribing = false;
    let mut held = tokio::time::interval(RETRY_EVERY);
    held.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One ping at a time, beside this loop (an unanswered one takes OP_TIMEOUT).
    let (pong_tx, mut pong_rx) = mpsc::unbounded_channel::<(u64, bool)>();
    let mut pinging = false;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = held.tick() => task.delivery.fill_held().await,
            _ = ping.tick(), if !pinging => {
                pinging = true;
                task.ping(pong_tx.clone());
            }
            Some((client, answered)) = pong_rx.recv() => {
                pinging = false;
                if let Some(renewed) = task.pong(client, answered) {
                    pushes = renewed;
                }
            }
            _ = retry.tick(), if !resubscribing => {
                resubscribing = task.subscribe_lost(done_tx.clone());
            }
            Some(done) = done_rx.recv() => {
                resubscribing = false;
                if let Some(renewed) = task.subscribed(done) {
                    // The old client's pushes still queued are dropped with its receiver:
                    // none of them may confirm a channel the new client has not subscribed.
                    pushes = renewed;
                }
            }
            cmd = rx.recv() => match cmd {
                None => return,
                Some(cmd) => task.commands(cmd, &mut rx).await,
            },
            push = pushes.recv() => match push {
                None => return,
                Some(push) => task.push(push).await,
            },
        }
    }
}

/// A pub/sub client and the queue its pushes arrive on.
fn connect(
    shared: &Shared,
) -> Result<(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>), EngineError> {
    let super::conn::Backend::Cluster { seeds, certs, .. } = &shared.backend else {
        return Err(EngineError::Internal("not a cluster".into()));
    };
    let (push_tx, pushes) = mpsc::unbounded_channel::<PushInfo>();
    // The same certificates as the command client's: the pub/sub connections go to the
    // same nodes.
    let client = super::conn::cluster_builder(seeds.clone(), certs.clone())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push_tx)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(OP_TIMEOUT)
        .retries(2)
        .build()
        .map_err(|e| EngineError::Internal(format!("redis cluster: {e}")))?;
    let conn =
        client.get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new());
    Ok((conn, pushes))
}

/// One re-subscription: the channel and, if it failed, why.
type Attempt = (String, Option<String>);

fn text(v: &Value) -> Option<String> {
    redis::from_redis_value_ref::<String>(v).ok()
}

impl Task {
    /// Starts subscribing the lost channels again (a few at a time) in a task of its own,
    /// which reports on `done`; false when nothing is lost.
    fn subscribe_lost(&mut self, done: mpsc::UnboundedSender<Vec<Attempt>>) -> bool {
        let channels = self.channels.round();
        if channels.is_empty() {
            return false;
        }
        let conn = self.conn.clone();
        tokio::spawn(async move {
            let attempts: Vec<Attempt> = futures_util::stream::iter(channels)
                .map(|ch| {
                    let mut conn = conn.clone();
                    async move {
                        let err = match tokio::time::timeout(OP_TIMEOUT, conn.ssubscribe(&ch)).await
                        {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e.to_string()),
                            Err(_) => Some("timed out".to_string()),
                        };
                        (ch, err)
                    }
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            // The loop may have stopped meanwhile: then nobody wants the report.
            let _ = done.send(attempts);
        });
        true
    }

    /// Takes a round's results: only a confirmation push makes a channel subscribed
    /// ([`Channels`]), so an `Ok` counts for nothing here and a channel still unconfirmed
    /// is tried again next round. A failure is logged once per outage; after
    /// [`RENEW_AFTER`](super::channels::RENEW_AFTER) of them the client is renewed and its push queue returned.
    fn subscribed(&mut self, attempts: Vec<Attempt>) -> Option<mpsc::UnboundedReceiver<PushInfo>> {
        let (channel, error) = attempts
            .into_iter()
            .find_map(|(ch, err)| err.map(|e| (ch, e)))?;
        let failed = self.channels.round_failed(Instant::now())?;
        self.shared.errors.inc();
        match failed {
            Failed::First => {
                tracing::warn!(%channel, %error, left = self.channels.lost_count(),
                    "redis cluster pub/sub: channels not subscribed yet; retrying");
                None
            }
            Failed::Ongoing => None,
            Failed::Renew => self.renew(),
        }
    }

    /// Pings every master (PING's cluster routing) in a task of its own, which reports
    /// whether all answered in time. Through the command client, not the pub/sub one: the
    /// crate matches a node connection's replies to commands in order, and confirmations
    /// of its own re-subscriptions there were taken as the pings' replies (so channels
    /// were never confirmed, and their gaps never filled: messages lost in the failover
    /// test). The command client reaches the same masters; a silent one is silent to both.
    fn ping(&self, pong: mpsc::UnboundedSender<(u64, bool)>) {
        let mut conn = self.shared.conn();
        let client = self.renewals;
        tokio::spawn(async move {
            let ping = redis::cmd("PING");
            let answer =
                tokio::time::timeout(OP_TIMEOUT, ping.query_async::<Value>(&mut conn)).await;
            // The loop may have stopped meanwhile: then nobody wants the report.
            let _ = pong.send((client, matches!(answer, Ok(Ok(_)))));
        });
    }

    /// Takes a ping's report: an unanswered one loses every channel (see the module
    /// docs), or renews the client; its push queue is then returned.
    fn pong(&mut self, client: u64, answered: bool) -> Option<mpsc::UnboundedReceiver<PushInfo>> {
        if client != self.renewals {
            return None; // asked of a client replaced since
        }
        if answered {
            self.channels.answered();
            return None;
        }
        self.shared.errors.inc();
        match self.channels.unanswered(Instant::now()) {
            Unanswered::LoseAll => {
                tracing::warn!(
                    "a redis cluster node did not answer a ping on the pub/sub client; subscribing again"
                );
                self.lose_all();
                None
            }
            Unanswered::Ongoing => None,
            Unanswered::Renew => self.renew(),
        }
    }

    /// Every channel is to be subscribed again (a node dropped or went silent).
    fn lose_all(&mut self) {
        let mut all = self.shared.keys.inbox_channels();
        all.extend(self.delivery.room_channels());
        self.channels.lose(all);
        self.down();
    }

    /// Replaces the pub/sub client: a client that keeps failing to subscribe (or whose
    /// replies went astray) is dropped with every subscription it holds, and a new one
    /// subscribes everything again; each confirmation then fills its gap from history.
    fn renew(&mut self) -> Option<mpsc::UnboundedReceiver<PushInfo>> {
        let (conn, pushes) = match connect(&self.shared) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "redis cluster pub/sub client");
                return None;
            }
        };
        tracing::warn!(
            left = self.channels.lost_count(),
            "redis cluster pub/sub: channels still not subscribed; connecting a new client"
        );
        self.conn = conn;
        self.renewals += 1;
        let mut all = self.shared.keys.inbox_channels();
        all.extend(self.delivery.room_channels());
        self.channels.renewed(Instant::now(), all);
        self.down();
        Some(pushes)
    }

    /// Channels were lost: `/readyz` fails after `redis.readinessGrace` unless they are
    /// back by then.
    fn down(&self) {
        let _ = self.shared.pubsub_down_since.compare_exchange(
            0,
            crate::engine::now_ms().max(PUBSUB_DOWN_SINCE_START),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Whether a channel is still wanted: an inbox channel, or a room this node delivers.
    fn wanted(&self, channel: &str) -> bool {
        let keys = &self.shared.keys;
        keys.is_inbox_channel(channel)
            || keys
                .room_of_channel(channel)
                .is_some_and(|r| self.delivery.has(r))
    }

    async fn push(&mut self, push: PushInfo) {
        let channel = push.data.first().and_then(text);
        match (push.kind, channel) {
            (PushKind::SMessage, Some(ch)) => {
                if let Some(Value::BulkString(payload)) = push.data.get(1) {
                    self.delivery.dispatch(&ch, payload).await;
                }
            }
            (PushKind::SSubscribe, Some(ch)) => {
                let confirmed = self.channels.confirm(&ch);
                if confirmed.outage_over {
                    tracing::info!("redis cluster pub/sub: every channel is subscribed again");
                }
                if confirmed.all_back {
                    // The node is ready again (`/readyz`, joins).
                    self.up.store(true, Ordering::Relaxed);
                    self.shared.pubsub_down_since.store(0, Ordering::Relaxed);
                }
                if confirmed.again {
                    self.shared.reconnects.inc();
                    self.delivery.fill_channel(&ch).await;
                }
            }
            (PushKind::SUnsubscribe, Some(ch)) => {
                // The slot moved (or its node stepped down): subscribe where it is now.
                let wanted = self.wanted(&ch);
                if self.channels.unsubscribed(&ch, wanted) {
                    tracing::info!(channel = %ch, "redis cluster moved a channel's slot; subscribing again");
                    self.down();
                }
            }
            (PushKind::Disconnection, _) => {
                tracing::warn!(
                    "a redis cluster node dropped its pub/sub connection; subscribing again"
                );
                self.lose_all();
            }
            _ => {}
        }
    }

    /// Runs `first` and the changes queued behind it (up to [`BATCH`]), in order. Inbox
    /// subscriptions (every connect makes one) need no Redis command but their tops: those
    /// of consecutive ones are read together, not one round trip each in this loop.
    async fn commands(&mut self, first: Cmd, rx: &mut mpsc::UnboundedReceiver<Cmd>) {
        let mut inboxes: Vec<(String, Vec<Reply>)> = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(cmd) = next.take() {
            taken += 1;
            match cmd {
                Cmd::Subscribe(room, reply)
                    if crate::protocol::is_inbox(&room) && !self.delivery.has(&room) =>
                {
                    match inboxes.iter_mut().find(|(r, _)| *r == room) {
                        Some((_, waiting)) => waiting.push(reply),
                        None => inboxes.push((room, vec![reply])),
                    }
                }
                cmd => {
                    self.add_inboxes(std::mem::take(&mut inboxes)).await;
                    self.command(cmd).await;
                }
            }
            if taken < BATCH {
                next = rx.try_recv().ok();
            }
        }
        self.add_inboxes(inboxes).await;
    }

    /// Starts delivering inboxes (their bucket's channel is subscribed already: no Redis
    /// command but their tops, read concurrently) and answers their callers.
    async fn add_inboxes(&mut self, inboxes: Vec<(String, Vec<Reply>)>) {
        if inboxes.is_empty() {
            return;
        }
        let tops = self
            .delivery
            .tops(inboxes.iter().map(|(r, _)| r.clone()).collect())
            .await;
        for ((_, waiting), (room, top)) in inboxes.into_iter().zip(tops) {
            let head = self.delivery.start(&room, top);
            for reply in waiting {
                let _ = reply.send(Ok(head.clone()));
            }
        }
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Subscribe(room, reply) => {
                if self.delivery.has(&room) {
                    let _ = reply.send(Ok(None));
                    return;
                }
                if crate::protocol::is_inbox(&room) {
                    // Its bucket's channel is subscribed already: no Redis command.
                    let head = self.delivery.add(&room).await;
                    let _ = reply.send(Ok(head));
                    return;
                }
                let channel = self.shared.keys.channel(&room);
                // The room's top is read meanwhile (see `Delivery::tops`).
                let top = self.delivery.tops(vec![room]);
                let subscribe = tokio::time::timeout(OP_TIMEOUT, self.conn.ssubscribe(&channel));
                match futures_util::future::join(subscribe, top).await {
                    (Ok(Ok(())), top) => {
                        // Counted as subscribed once its confirmation is taken (next in
                        // the push queue, unless the reply was another command's): until
                        // then the retry rounds treat it as lost.
                        self.channels.await_confirmation(channel);
                        for (room, top) in top {
                            self.delivery.start(&room, top);
                        }
                        let _ = reply.send(Ok(None));
                    }
                    (Ok(Err(e)), _) => {
                        let _ = reply.send(Err(self.shared.fail_pubsub(&e)));
                    }
                    (Err(_), _) => {
                        let _ = reply.send(Err(too_slow()));
                    }
                }
            }
            Cmd::Unsubscribe(room, reply) => {
                if !self.delivery.remove_unused(&room) {
                    let _ = reply.send(Ok(None));
                    return;
                }
                if !crate::protocol::is_inbox(&room) {
                    let channel = self.shared.keys.channel(&room);
                    self.channels.forget(&channel);
                    let _ =
                        tokio::time::timeout(OP_TIMEOUT, self.conn.sunsubscribe(&channel)).await;
                }
                let _ = reply.send(Ok(None));
            }
        }
    }
}
