//! The outbound side of a connection: a bounded queue and the single task that writes it.
//!
//! Everything a client receives goes through one FIFO queue, so replies, replays and live
//! messages reach the socket in the order they were queued. The writer also owns ordering
//! per room: it never writes a `msg` whose seq it already wrote, and while a room is
//! catching up from history it holds that room's live messages back until the replay
//! is out. Producers never block: a full queue closes the connection as a slow consumer.

use crate::disconnect::{CloseReason, HEARTBEAT_TIMEOUT, SLOW_CONSUMER};
use crate::engine::Envelope;
use crate::protocol::StreamPosition;
use futures_util::{Sink, SinkExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// One item of a connection's queue.
#[derive(Debug)]
pub enum Outbound {
    /// A ready frame (reply, presence, goaway).
    Frame(Utf8Bytes),
    /// A live room message.
    Msg(Arc<Envelope>),
    /// Hold live messages of this room back until its `Replay` arrives.
    BeginCatchup(Arc<str>),
    /// Messages from history, then release held-back live ones. `from` is the position
    /// the client had; nothing at or below it is written.
    Replay {
        /// Room being caught up.
        room: Arc<str>,
        /// Client position before the replay.
        from: StreamPosition,
        /// Messages after `from`, in seq order.
        msgs: Vec<Arc<Envelope>>,
    },
    /// Release held-back live messages without a replay (the catch-up failed).
    Release(Arc<str>),
    /// The room was left: stop writing its messages.
    Forget(Arc<str>),
    /// Close the connection once everything queued before this is written.
    Close(CloseReason),
}

impl Outbound {
    /// Bytes counted against the queue's byte limit.
    fn weight(&self) -> usize {
        match self {
            Outbound::Frame(f) => f.len(),
            Outbound::Msg(e) => e.frame.len(),
            _ => 0,
        }
    }
}

struct Shared {
    bytes: AtomicUsize,
    max_bytes: usize,
    high_water: AtomicUsize,
    closing: CancellationToken,
    reason: OnceLock<CloseReason>,
    told: std::sync::atomic::AtomicBool,
    /// A forwarded (opaque) connection: nothing can be queued, only a close.
    opaque: bool,
}

/// Producer handle of a connection's outbound queue; cheap to clone.
#[derive(Clone)]
pub struct OutboundQueue {
    tx: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
}

/// Consumer end, handed to [`run_writer`].
pub struct OutboundReceiver {
    rx: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
}

/// Creates a queue bounded by `max_frames` items and `max_bytes` queued bytes.
pub fn queue(max_frames: usize, max_bytes: usize) -> (OutboundQueue, OutboundReceiver) {
    let (tx, rx) = mpsc::channel(max_frames.max(1));
    let shared = Arc::new(Shared {
        bytes: AtomicUsize::new(0),
        max_bytes,
        high_water: AtomicUsize::new(0),
        closing: CancellationToken::new(),
        reason: OnceLock::new(),
        told: Default::default(),
        opaque: false,
    });
    (
        OutboundQueue {
            tx,
            shared: shared.clone(),
        },
        OutboundReceiver { rx, shared },
    )
}

impl OutboundQueue {
    /// Queues an item without waiting. Returns false if the connection is (now) closing;
    /// an overflow closes it as a slow consumer.
    pub fn push(&self, item: Outbound) -> bool {
        if self.shared.closing.is_cancelled() {
            return false;
        }
        let weight = item.weight();
        let queued = self.shared.bytes.fetch_add(weight, Ordering::Relaxed) + weight;
        if queued > self.shared.max_bytes {
            self.shared.bytes.fetch_sub(weight, Ordering::Relaxed);
            self.close(SLOW_CONSUMER);
            return false;
        }
        self.shared.high_water.fetch_max(queued, Ordering::Relaxed);
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(err) => {
                self.shared.bytes.fetch_sub(weight, Ordering::Relaxed);
                if matches!(err, mpsc::error::TrySendError::Full(_)) {
                    self.close(SLOW_CONSUMER);
                }
                false
            }
        }
    }

    /// Queues a ready frame.
    pub fn frame(&self, text: impl Into<Utf8Bytes>) -> bool {
        self.push(Outbound::Frame(text.into()))
    }

    /// A close handle for a connection whose frames the gateway does not speak (a
    /// forwarded one): [`goaway`](Self::goaway) just closes it.
    pub fn opaque() -> OutboundQueue {
        let (tx, _rx) = mpsc::channel(1);
        OutboundQueue {
            tx,
            shared: Arc::new(Shared {
                bytes: AtomicUsize::new(0),
                max_bytes: 0,
                high_water: AtomicUsize::new(0),
                closing: CancellationToken::new(),
                reason: OnceLock::new(),
                told: Default::default(),
                opaque: true,
            }),
        }
    }

    /// Sends `frame` (a `goaway`) and then closes with `reason`, once; returns false if
    /// this connection was told already or is closing. An opaque connection is closed.
    pub fn goaway(&self, frame: impl Into<Utf8Bytes>, reason: CloseReason) -> bool {
        if self.shared.told.swap(true, Ordering::Relaxed) {
            return false;
        }
        if self.shared.opaque {
            self.close(reason);
            return true;
        }
        if !(self.frame(frame) && self.push(Outbound::Close(reason))) {
            self.close(reason);
        }
        true
    }

    /// Whether [`goaway`](Self::goaway) was called.
    pub fn told_to_go(&self) -> bool {
        self.shared.told.load(Ordering::Relaxed)
    }

    /// Asks the writer to close the socket; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.shared.reason.set(reason);
        self.shared.closing.cancel();
    }

    /// Resolves when the connection starts closing.
    pub fn closing(&self) -> &CancellationToken {
        &self.shared.closing
    }

    /// The close reason, once closing.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason.get().copied()
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Largest number of bytes ever queued at once on this connection.
    pub fn high_water_bytes(&self) -> usize {
        self.shared.high_water.load(Ordering::Relaxed)
    }
}

/// The writer's state of one room: the last position written, and live messages held
/// back while the room catches up.
#[derive(Default)]
struct WriterRoom {
    /// Unknown until a replay or a message says the epoch; a message of another epoch
    /// restarts the count.
    written: Option<StreamPosition>,
    held: Option<Vec<Arc<Envelope>>>,
}

/// What the writer observed when it stopped.
#[derive(Debug, Default)]
pub struct WriterOutcome {
    /// Last position written per room (where a resume would start), for the rooms whose
    /// epoch the writer learned.
    pub positions: HashMap<Arc<str>, StreamPosition>,
    /// Messages written to the socket.
    pub delivered: u64,
}

/// Settings of the writer.
pub struct WriterSettings {
    /// Ping period.
    pub heartbeat: Duration,
    /// Millis since `epoch` of the last frame received, updated by the reader.
    pub last_seen: Arc<AtomicU64>,
    /// Reference instant for `last_seen`.
    pub epoch: Instant,
    /// Called with (room, seq) after messages of a user's inbox are written.
    pub on_inbox: Option<Box<dyn Fn(u64) + Send + Sync>>,
    /// The inbox room of the connection's user.
    pub inbox: Arc<str>,
    /// Called once per written message (metrics).
    pub on_delivered: Box<dyn Fn(&Envelope) + Send + Sync>,
}

/// Most items written before a flush.
const BATCH: usize = 64;

/// Writes queued items to `sink` until the connection closes; sends pings and enforces the
/// idle timeout. Sends the close frame itself.
pub async fn run_writer<S>(
    mut sink: S,
    mut rx: OutboundReceiver,
    settings: WriterSettings,
) -> WriterOutcome
where
    S: Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let mut rooms: HashMap<Arc<str>, WriterRoom> = HashMap::new();
    let mut out = WriterOutcome::default();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.heartbeat,
        settings.heartbeat,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_limit = (settings.heartbeat * 2).as_millis() as u64;
    let closing = rx.shared.closing.clone();
    loop {
        tokio::select! {
            biased;
            _ = closing.cancelled() => break,
            _ = ping.tick() => {
                let now = settings.epoch.elapsed().as_millis() as u64;
                if now.saturating_sub(settings.last_seen.load(Ordering::Relaxed)) > idle_limit {
                    let _ = rx.shared.reason.set(HEARTBEAT_TIMEOUT);
                    rx.shared.closing.cancel();
                    break;
                }
                // A blocked socket must not keep us from noticing a close.
                let sent = tokio::select! {
                    biased;
                    _ = closing.cancelled() => break,
                    r = sink.send(Message::Ping(Default::default())) => r,
                };
                if sent.is_err() {
                    break;
                }
            }
            item = rx.rx.recv() => {
                let Some(item) = item else { break };
                let written = tokio::select! {
                    biased;
                    _ = closing.cancelled() => break,
                    r = write_batch(&mut sink, &mut rx, &mut rooms, item, &settings, &mut out) => r,
                };
                match written {
                    Ok(Some(seq)) => {
                        if let Some(cb) = settings.on_inbox.as_ref() {
                            cb(seq);
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
    }
    if let Some(reason) = rx.shared.reason.get() {
        let frame = CloseFrame {
            code: CloseCode::from(reason.code),
            reason: reason.reason.into(),
        };
        let send = async {
            let _ = sink.send(Message::Close(Some(frame))).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
    }
    rx.rx.close();
    out.positions = rooms
        .into_iter()
        .filter_map(|(r, c)| Some((r, c.written?)))
        .collect();
    out
}

/// Writes `first` and whatever else is queued (up to [`BATCH`]), then flushes once.
/// Returns the last inbox seq written, if any.
async fn write_batch<S>(
    sink: &mut S,
    rx: &mut OutboundReceiver,
    rooms: &mut HashMap<Arc<str>, WriterRoom>,
    first: Outbound,
    settings: &WriterSettings,
    out: &mut WriterOutcome,
) -> Result<Option<u64>, tokio_tungstenite::tungstenite::Error>
where
    S: Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let mut inbox_seq = None;
    let mut next = Some(first);
    let mut n = 0;
    while let Some(item) = next.take() {
        if let Outbound::Close(reason) = item {
            sink.flush().await?;
            let _ = rx.shared.reason.set(reason);
            rx.shared.closing.cancel();
            return Ok(inbox_seq);
        }
        let weight = item.weight();
        let res = write_item(sink, rooms, item, settings, out, &mut inbox_seq).await;
        rx.shared.bytes.fetch_sub(weight, Ordering::Relaxed);
        res?;
        n += 1;
        if n < BATCH {
            next = rx.rx.try_recv().ok();
        }
    }
    sink.flush().await?;
    Ok(inbox_seq)
}

async fn write_item<S>(
    sink: &mut S,
    rooms: &mut HashMap<Arc<str>, WriterRoom>,
    item: Outbound,
    settings: &WriterSettings,
    out: &mut WriterOutcome,
    inbox_seq: &mut Option<u64>,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    match item {
        Outbound::Frame(f) => sink.feed(Message::Text(f)).await,
        Outbound::Msg(env) => {
            let Some(state) = rooms.get_mut(&env.room) else {
                return Ok(()); // left meanwhile
            };
            if let Some(held) = state.held.as_mut() {
                held.push(env);
                return Ok(());
            }
            write_msg(sink, state, &env, settings, out, inbox_seq).await
        }
        Outbound::BeginCatchup(room) => {
            rooms
                .entry(room)
                .or_default()
                .held
                .get_or_insert_with(Vec::new);
            Ok(())
        }
        Outbound::Replay { room, from, msgs } => {
            let state = rooms.entry(room).or_default();
            match &mut state.written {
                Some(w) if w.epoch == from.epoch => w.seq = w.seq.max(from.seq),
                _ => state.written = Some(from),
            }
            let held = state.held.take().unwrap_or_default();
            for env in msgs.iter().chain(held.iter()) {
                write_msg(sink, state, env, settings, out, inbox_seq).await?;
            }
            Ok(())
        }
        Outbound::Release(room) => {
            let state = rooms.entry(room).or_default();
            let held = state.held.take().unwrap_or_default();
            for env in &held {
                write_msg(sink, state, env, settings, out, inbox_seq).await?;
            }
            Ok(())
        }
        Outbound::Forget(room) => {
            rooms.remove(&room);
            Ok(())
        }
        Outbound::Close(_) => Ok(()), // handled by write_batch
    }
}

async fn write_msg<S>(
    sink: &mut S,
    state: &mut WriterRoom,
    env: &Envelope,
    settings: &WriterSettings,
    out: &mut WriterOutcome,
    inbox_seq: &mut Option<u64>,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    // A message of another epoch: history was lost and restarted (e.g. Redis came back
    // empty), seqs start over.
    let last = match &state.written {
        Some(w) if w.epoch == env.epoch => w.seq,
        _ => 0,
    };
    if env.seq <= last {
        return Ok(()); // already written: at-least-once upstream, exactly once here
    }
    sink.feed(Message::Text(env.frame.clone())).await?;
    state.written = Some(StreamPosition::new(env.epoch.clone(), env.seq));
    out.delivered += 1;
    (settings.on_delivered)(env);
    if *env.room == *settings.inbox {
        *inbox_seq = Some(env.seq);
    }
    Ok(())
}

#[cfg(any(test, feature = "testing"))]
impl OutboundReceiver {
    /// Takes one queued item without a writer (tests only).
    pub fn try_recv_for_test(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(room: &str, seq: u64) -> Arc<Envelope> {
        Arc::new(Envelope {
            room: room.into(),
            seq,
            epoch: "e".into(),
            ts: 0,
            traceparent: None,
            frame: format!("{{\"seq\":{seq}}}").into(),
        })
    }

    #[test]
    fn overflow_by_bytes_closes_as_slow_consumer() {
        let (q, _rx) = queue(100, 25);
        assert!(q.push(Outbound::Msg(env("r", 1))));
        assert!(q.push(Outbound::Msg(env("r", 2))));
        assert!(!q.push(Outbound::Msg(env("r", 3))));
        // The number clients see (docs/protocol.md), not only the constant's name.
        let closed = q.close_reason().map(|r| (r.code, r.reason));
        assert_eq!(closed, Some((1013, "slow consumer")));
        assert!(q.queued_bytes() <= 25);
        assert!(!q.frame("late"), "closing queue refuses items");
    }

    #[test]
    fn overflow_by_frames_closes_as_slow_consumer() {
        let (q, _rx) = queue(2, 1 << 20);
        assert!(q.frame("a"));
        assert!(q.frame("b"));
        assert!(!q.frame("c"));
        let closed = q.close_reason().map(|r| (r.code, r.reason));
        assert_eq!(closed, Some((1013, "slow consumer")));
    }

    #[tokio::test]
    async fn writer_orders_replay_before_held_live_and_drops_duplicates() {
        let (q, rx) = queue(100, 1 << 20);
        let (sink_tx, mut sink_rx) = futures_channel_sink();
        let room: Arc<str> = "r".into();
        q.push(Outbound::BeginCatchup(room.clone()));
        q.push(Outbound::Msg(env("r", 3))); // live, arrives during catch-up
        q.push(Outbound::Msg(env("r", 4)));
        q.push(Outbound::Replay {
            room: room.clone(),
            from: StreamPosition::new("e", 1),
            msgs: vec![env("r", 2), env("r", 3)],
        });
        q.push(Outbound::Msg(env("r", 4))); // duplicate
        q.push(Outbound::Msg(env("r", 5)));
        q.push(Outbound::Msg(env("other", 9))); // not joined
        let settings = WriterSettings {
            heartbeat: Duration::from_secs(60),
            last_seen: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            on_inbox: None,
            inbox: "user:x".into(),
            on_delivered: Box::new(|_| {}),
        };
        let closer = q.clone();
        let task = tokio::spawn(run_writer(sink_tx, rx, settings));
        let mut seen = Vec::new();
        while seen.len() < 4 {
            match sink_rx.recv().await {
                Some(Message::Text(t)) => seen.push(t.to_string()),
                Some(_) => {}
                None => break,
            }
        }
        closer.close(SLOW_CONSUMER);
        let outcome = task.await.expect("writer");
        assert_eq!(
            seen,
            ["{\"seq\":2}", "{\"seq\":3}", "{\"seq\":4}", "{\"seq\":5}"]
        );
        assert_eq!(
            outcome.positions.get("r"),
            Some(&StreamPosition::new("e", 5))
        );
        assert_eq!(outcome.delivered, 4);
        // The writer ends with the close frame of the reason, code and text.
        let mut close = None;
        while let Ok(m) = sink_rx.try_recv() {
            if let Message::Close(f) = m {
                close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
        }
        assert_eq!(close, Some((1013, "slow consumer".to_string())));
    }

    /// A room caught up again on the same connection (a resume or re-join from an older
    /// position): the replay overlaps what was written, and nothing is written twice.
    #[tokio::test]
    async fn a_second_catchup_of_a_room_writes_nothing_twice() {
        let (q, rx) = queue(100, 1 << 20);
        let (sink_tx, mut sink_rx) = futures_channel_sink();
        let room: Arc<str> = "r".into();
        q.push(Outbound::BeginCatchup(room.clone()));
        q.push(Outbound::Replay {
            room: room.clone(),
            from: StreamPosition::new("e", 0),
            msgs: vec![env("r", 1), env("r", 2), env("r", 3)],
        });
        q.push(Outbound::BeginCatchup(room.clone()));
        q.push(Outbound::Replay {
            room: room.clone(),
            from: StreamPosition::new("e", 1),
            msgs: vec![env("r", 2), env("r", 3), env("r", 4)],
        });
        let settings = WriterSettings {
            heartbeat: Duration::from_secs(60),
            last_seen: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            on_inbox: None,
            inbox: "user:x".into(),
            on_delivered: Box::new(|_| {}),
        };
        let closer = q.clone();
        let task = tokio::spawn(run_writer(sink_tx, rx, settings));
        let mut seen = Vec::new();
        while seen.len() < 4 {
            match sink_rx.recv().await {
                Some(Message::Text(t)) => seen.push(t.to_string()),
                Some(_) => {}
                None => break,
            }
        }
        closer.close(SLOW_CONSUMER);
        let outcome = task.await.expect("writer");
        assert_eq!(
            seen,
            ["{\"seq\":1}", "{\"seq\":2}", "{\"seq\":3}", "{\"seq\":4}"]
        );
        assert_eq!(outcome.delivered, 4, "nothing written twice");
    }

    /// A sink backed by an unbounded channel, standing in for the socket.
    fn futures_channel_sink() -> (
        impl Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
        mpsc::UnboundedReceiver<Message>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = futures_util::sink::unfold(tx, |tx, msg: Message| async move {
            let _ = tx.send(msg);
            Ok::<_, tokio_tungstenite::tungstenite::Error>(tx)
        });
        (Box::pin(sink), rx)
    }
}
