//! The pub/sub side of the Redis engine: one task owns the dedicated pub/sub connection,
//! subscribes to a room channel while this node has local members, hands every message
//! to the hub, and after a reconnect re-subscribes and fills the gap from history before
//! passing on live traffic again (connections drop what they already wrote by seq).

use super::{Shared, PUBSUB_DOWN_SINCE_START};
use crate::engine::{EngineError, Envelope, HistoryQuery};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

enum Cmd {
    Subscribe(String, oneshot::Sender<Result<(), EngineError>>),
    Unsubscribe(String, oneshot::Sender<Result<(), EngineError>>),
}

/// Sends subscription changes to the subscriber task.
pub(crate) struct Handle {
    tx: mpsc::UnboundedSender<Cmd>,
    /// Rooms whose subscription Redis has confirmed (the fast path for later joiners).
    active: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

fn gone() -> EngineError {
    EngineError::Unavailable("redis subscriber stopped".into())
}

impl Handle {
    /// Subscribes this node to a room channel; returns once Redis has confirmed it, so a
    /// joiner that reads history afterwards cannot miss a message in between. Every
    /// joiner calls this, not only the first: a second joiner must wait too while the
    /// first one's subscription is still on its way.
    pub(crate) async fn subscribe(&self, room: &str) -> Result<(), EngineError> {
        if lock(&self.active).contains(room) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Subscribe(room.to_string(), tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Unsubscribes this node from a room channel.
    pub(crate) async fn unsubscribe(&self, room: &str) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Unsubscribe(room.to_string(), tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Starts the subscriber task.
pub(crate) fn spawn(
    client: redis::Client,
    shared: Arc<Shared>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    let active = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    tokio::spawn(run(client, shared, up, stop, rx, active.clone()));
    Handle { tx, active }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Last (epoch, seq) this node saw per subscribed room.
type Positions = HashMap<String, (Option<Arc<str>>, u64)>;

async fn run(
    client: redis::Client,
    shared: Arc<Shared>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    active: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
) {
    let mut rooms: Positions = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            p = client.get_async_pubsub() => p,
        };
        let pubsub = match pubsub {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub connect failed");
                shared.errors.inc();
                // Refuse subscription changes while down, without waiting for Redis.
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = &mut sleep => break,
                        cmd = rx.recv() => match cmd {
                            None => return,
                            Some(Cmd::Subscribe(_, reply)) => {
                                let _ = reply.send(Err(EngineError::Unavailable("redis is unreachable".into())));
                            }
                            Some(Cmd::Unsubscribe(room, reply)) => {
                                if !shared.hub.has_subscribers(&room) {
                                    rooms.remove(&room);
                                    lock(&active).remove(&room);
                                }
                                let _ = reply.send(Ok(()));
                            }
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = rooms.keys().map(|r| shared.keys.channel(r)).collect();
        if !channels.is_empty() {
            if let Err(e) = sink.subscribe(channels).await {
                tracing::warn!(error = %e, "redis re-subscribe failed");
                continue;
            }
        }
        if connected_before {
            shared.reconnects.inc();
            fill_gaps(&shared, &mut rooms).await;
            tracing::info!(
                rooms = rooms.len(),
                "redis pub/sub reconnected and re-subscribed"
            );
        }
        connected_before = true;
        backoff = Duration::from_millis(100);
        up.store(true, Ordering::Relaxed);
        shared.pubsub_down_since.store(0, Ordering::Relaxed);

        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(Cmd::Subscribe(room, reply)) => {
                        if rooms.contains_key(&room) {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        let res = sink.subscribe(shared.keys.channel(&room)).await;
                        let failed = res.is_err();
                        let res = match res {
                            Ok(()) => {
                                let top = current_top(&shared, &room).await;
                                lock(&active).insert(room.clone());
                                rooms.insert(room, top);
                                Ok(())
                            }
                            Err(e) => Err(shared.fail(e)),
                        };
                        let _ = reply.send(res);
                        if failed {
                            break;
                        }
                    }
                    Some(Cmd::Unsubscribe(room, reply)) => {
                        // A joiner may have arrived since the last one left: keep it then.
                        if shared.hub.has_subscribers(&room) {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        rooms.remove(&room);
                        lock(&active).remove(&room);
                        let res = sink.unsubscribe(shared.keys.channel(&room)).await;
                        let failed = res.is_err();
                        // Unsubscribing from a dead connection is moot: report success.
                        let _ = reply.send(Ok(()));
                        if failed {
                            break;
                        }
                    }
                },
                msg = stream.next() => match msg {
                    None => break,
                    Some(msg) => dispatch(&shared, &mut rooms, &msg),
                },
            }
        }
        up.store(false, Ordering::Relaxed);
        let _ = shared.pubsub_down_since.compare_exchange(
            0,
            crate::engine::now_ms().max(PUBSUB_DOWN_SINCE_START),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

/// The room's (epoch, top) now, so a gap after a reconnect can be filled from there.
async fn current_top(shared: &Shared, room: &str) -> (Option<Arc<str>>, u64) {
    let mut conn = shared.conn.clone();
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(shared.keys.meta(room)).arg("epoch").arg("seq");
    match shared
        .run(cmd.query_async::<(Option<String>, Option<u64>)>(&mut conn))
        .await
    {
        Ok((epoch, seq)) => (epoch.map(Into::into), seq.unwrap_or(0)),
        Err(_) => (None, 0),
    }
}

/// Delivers what was published while the pub/sub connection was down.
async fn fill_gaps(shared: &Shared, rooms: &mut Positions) {
    let names: Vec<String> = rooms.keys().cloned().collect();
    for room in names {
        let Some((epoch, seq)) = rooms.get(&room).cloned() else {
            continue;
        };
        let mut page = match shared
            .history(
                &room,
                HistoryQuery {
                    since: Some(seq),
                    before: None,
                    limit: usize::MAX,
                },
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%room, error = %e, "gap fill failed");
                continue;
            }
        };
        if epoch.as_ref().is_some_and(|e| *e != page.epoch) {
            // History was lost (Redis restarted empty): everything of the new epoch is new.
            match shared
                .history(
                    &room,
                    HistoryQuery {
                        since: Some(0),
                        before: None,
                        limit: usize::MAX,
                    },
                )
                .await
            {
                Ok(p) => page = p,
                Err(e) => {
                    tracing::warn!(%room, error = %e, "gap fill failed");
                    continue;
                }
            }
        }
        let mut last = (Some(page.epoch.clone()), page.top.max(seq));
        for env in &page.messages {
            shared.hub.deliver(env);
            last.1 = env.seq;
        }
        if page.messages.is_empty() {
            last.1 = page.top;
        }
        rooms.insert(room, last);
    }
}

/// Hands one pub/sub message to the hub.
fn dispatch(shared: &Shared, rooms: &mut Positions, msg: &redis::Msg) {
    let Some(room) = shared.keys.room_of_channel(msg.get_channel_name()) else {
        return;
    };
    let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
        return;
    };
    if let Some(frame) = payload.strip_prefix("p ") {
        shared.hub.broadcast(room, &frame.to_string().into());
        return;
    }
    if let Some(rest) = payload.strip_prefix("e ") {
        // Ephemeral: no seq, no position to track, nothing to fill after a gap.
        let mut parts = rest.splitn(3, ' ');
        let (Some(Ok(ts)), Some(tp), Some(frame)) = (
            parts.next().map(str::parse::<u64>),
            parts.next(),
            parts.next(),
        ) else {
            return;
        };
        shared.hub.deliver(&Arc::new(Envelope {
            room: room.into(),
            seq: 0,
            epoch: "".into(),
            ts,
            traceparent: (tp != "-").then(|| Arc::from(tp)),
            frame: frame.to_string().into(),
        }));
        return;
    }
    let Some(rest) = payload.strip_prefix("m ") else {
        return;
    };
    let mut parts = rest.splitn(5, ' ');
    let (Some(seq), Some(epoch), Some(ts), Some(tp), Some(frame)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return;
    };
    let (Ok(seq), Ok(ts)) = (seq.parse::<u64>(), ts.parse::<u64>()) else {
        return;
    };
    let env = Arc::new(Envelope {
        room: room.into(),
        seq,
        epoch: epoch.into(),
        ts,
        traceparent: (tp != "-").then(|| Arc::from(tp)),
        frame: frame.to_string().into(),
    });
    if let Some(pos) = rooms.get_mut(room) {
        *pos = (Some(env.epoch.clone()), seq);
    }
    shared.hub.deliver(&env);
}
