//! The outbound side of a connection: a bounded queue and the single task that writes it.
//!
//! Everything a client receives goes through one FIFO queue, so replies, replays and live
//! messages reach the socket in the order they were queued. The writer also owns ordering
//! per room: it never writes a `msg` whose seq it already wrote, and while a room is
//! catching up from history it holds that room's live messages back until the replay
//! is out. Producers never block: a full queue closes the connection as a slow consumer.
//! The one exception is pacing: a replay (and a command's reply) waits for room in the
//! queue instead ([`OutboundQueue::push_paced`]), so a large backlog goes out at the
//! client's pace. Live messages held back during a catch-up still count: more than the
//! queue's byte limit of them closes the connection like an overflow.
//!
//! A write that cannot complete within two heartbeat periods (the client stopped reading,
//! even if it still sends) closes the connection: nothing waits on a socket forever.

#[cfg(test)]
mod tests;
mod writer;

pub use writer::{run_writer, WriterOutcome, WriterSettings};

use crate::disconnect::{CloseReason, SLOW_CONSUMER};
use crate::engine::Envelope;
use crate::protocol::StreamPosition;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
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
            Outbound::Replay { msgs, .. } => msgs.iter().map(|m| m.frame.len()).sum(),
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
    /// Woken after the writer took items off the queue (paced producers wait on it).
    drained: tokio::sync::Notify,
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
        drained: tokio::sync::Notify::new(),
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

    /// Queues an item once there is room for it: waits while the queue holds too many
    /// bytes (or items) to take it, so the client's reading sets the pace. An item heavier
    /// than the whole byte limit goes into an empty queue. Returns false if the
    /// connection closes first.
    pub async fn push_paced(&self, item: Outbound) -> bool {
        let weight = item.weight();
        let fits = |q: &Self| {
            let queued = q.shared.bytes.load(Ordering::Relaxed);
            (queued == 0 || queued + weight <= q.shared.max_bytes) && q.tx.capacity() > 0
        };
        loop {
            if self.shared.closing.is_cancelled() {
                return false;
            }
            if fits(self) {
                let queued = self.shared.bytes.fetch_add(weight, Ordering::Relaxed) + weight;
                self.shared.high_water.fetch_max(queued, Ordering::Relaxed);
                return match self.tx.try_send(item) {
                    Ok(()) => true,
                    Err(_) => {
                        self.shared.bytes.fetch_sub(weight, Ordering::Relaxed);
                        false
                    }
                };
            }
            // No room: wait for the writer to take items off (registered before the
            // second look, so a wake-up in between is not lost).
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if fits(self) {
                continue;
            }
            tokio::select! {
                _ = self.shared.closing.cancelled() => return false,
                _ = drained => {}
            }
        }
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
                drained: tokio::sync::Notify::new(),
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

impl OutboundReceiver {
    /// The next item, for a consumer that is not a socket writer (the control plane).
    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await?;
        self.shared
            .bytes
            .fetch_sub(item.weight(), Ordering::Relaxed);
        Some(item)
    }
}

#[cfg(any(test, feature = "testing"))]
impl OutboundReceiver {
    /// Takes one queued item without a writer (tests only).
    pub fn try_recv_for_test(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }
}
