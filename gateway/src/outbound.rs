//! The outbound side of a connection: a bounded queue and the single task that writes it.
//!
//! Everything a client receives goes through one FIFO queue, so replies, replays and live
//! messages reach the socket in the order they were queued. The writer also owns ordering
//! per room: it never writes a `msg` whose seq it already wrote, and while a room is
//! catching up from history it holds that room's live messages back until the replay
//! is out. Producers never block: a full queue closes the connection as a slow consumer.
//! The one exception is pacing: a replay (and a command's reply) waits for room in the
//! queue instead ([`OutboundQueue::push_paced`]), so a large backlog goes out at the
//! client's pace, in at most half the queue's bytes (live traffic keeps the rest). Live
//! messages held back during a catch-up still count: more than the queue's byte limit of
//! them closes the connection like an overflow.
//!
//! A write that cannot complete within two heartbeat periods (the client stopped reading,
//! even if it still sends) closes the connection: nothing waits on a socket forever.
//!
//! A live message that finds the queue empty and the writer idle skips both: the
//! publishing task writes it to the socket itself ([`wire`]), under the queue's lock and
//! by the same ordering rules ([`order`]). At the rates real rooms see, that is most
//! deliveries, and each then costs one syscall and no task wake-up. A busy room's
//! messages are queued without waking the writer ([`Via::Quiet`]): the hub wakes it a
//! window later, to write them all at once.

mod closed;
mod order;
mod pusher;
mod receiver;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_wire;
#[cfg(test)]
mod tests_writer;
mod wire;
mod writer;

pub use pusher::{Delivered, Pusher, Via};
pub use receiver::OutboundReceiver;
pub use wire::{text_frame, Wire, WireIo};
pub use writer::{run_writer, OnDelivered, WriterOutcome, WriterSettings};

use crate::disconnect::{CloseReason, SLOW_CONSUMER};
use crate::engine::Envelope;
use crate::protocol::StreamPosition;
use closed::Closed;
use order::Order;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;

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
    /// Send what the fast path left pending in the wire.
    Flush,
    /// A WebSocket ping (the node's [`heartbeat`](crate::heartbeat)).
    Ping,
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

/// The fields a fan-out's fast path reads come first, in this order (`repr(C)` keeps it):
/// with the `Arc`'s counts they fill the allocation's first two cache lines, where
/// Rust's own order spread them over four, and a fan-out to 1,000 members meets each of
/// its members' lines cold (perf: the load of `stopping` was the fast path's largest
/// user-space cost at 50 messages/s). A test in `tests.rs` checks the order
/// (`the_fast_paths_fields_fill_the_first_two_cache_lines`).
#[repr(C)]
struct Shared {
    /// Closing: producers check this on every push, waiters see it through `closed`.
    stopping: AtomicBool,
    /// A `goaway` was sent ([`OutboundQueue::goaway`]). This flag and the next sit in
    /// what would otherwise be padding before the lock.
    told: AtomicBool,
    /// A forwarded (opaque) connection: nothing can be queued, only a close.
    opaque: bool,
    /// Where the fast path's socket (`Items::fast`) is, null without one: only for a
    /// fan-out to prefetch it ([`Pusher::prefetch_wire`]), never read through. The
    /// socket's allocation is the fast path's next miss after these lines.
    wire_at: AtomicPtr<u8>,
    /// The items. A plain deque rather than a channel: an idle connection's queue holds
    /// no allocation (a bounded tokio channel keeps a 32-slot block, ~2.4 KiB, per
    /// connection for its whole life).
    items: Mutex<Items>,
    bytes: AtomicUsize,
    max_bytes: usize,
    high_water: AtomicUsize,
    /// Woken once, when closing starts. A Notify rather than a cancellation token: the
    /// token is a separate allocation (112 bytes) every connection paid for its life.
    closed: tokio::sync::Notify,
    reason: OnceLock<CloseReason>,
    /// Woken after the writer took items off the queue (paced producers wait on it).
    drained: tokio::sync::Notify,
    max_frames: usize,
    /// Woken when an item is queued, or the last producer or the writer went (the
    /// writer waits on it; one waiter, so a wake-up before it waits is kept).
    queued: tokio::sync::Notify,
    /// When the client was last heard from, in ms on the node's clock (the reader notes
    /// every frame; the heartbeat closes a connection silent for too long).
    heard: AtomicU64,
}

/// In the order the fast path reads them (see [`Shared`]).
#[derive(Default)]
#[repr(C)]
struct Items {
    /// The consumer is gone (or stopped): nothing can be queued any more.
    closed: bool,
    /// The writer took items and has not written them all yet: live messages queue
    /// behind them rather than take the fast path.
    busy: bool,
    /// Producer handles alive. In what would be padding: keeps `Shared` in its size class.
    senders: u32,
    /// The socket, for the fast path (none for a consumer that is not a socket).
    fast: Option<Arc<wire::Wire>>,
    queue: VecDeque<Outbound>,
    /// What was written per room, and what is held back.
    order: Order,
}

impl Shared {
    fn new(max_frames: usize, max_bytes: usize, opaque: bool) -> Shared {
        Shared {
            stopping: AtomicBool::new(false),
            bytes: AtomicUsize::new(0),
            max_bytes,
            high_water: AtomicUsize::new(0),
            closed: tokio::sync::Notify::new(),
            reason: OnceLock::new(),
            told: Default::default(),
            opaque,
            wire_at: AtomicPtr::new(std::ptr::null_mut()),
            drained: tokio::sync::Notify::new(),
            items: Mutex::new(Items {
                senders: 1,
                closed: opaque,
                ..Default::default()
            }),
            max_frames: max_frames.max(1),
            queued: tokio::sync::Notify::new(),
            heard: AtomicU64::new(0),
        }
    }

    /// Starts closing: with `reason` if none was given yet.
    fn stop(&self, reason: Option<CloseReason>) {
        if let Some(reason) = reason {
            let _ = self.reason.set(reason);
        }
        self.stopping.store(true, Ordering::Release);
        self.closed.notify_waiters();
        // The writer waits on the queue alone: its task holds no future of `closed`.
        self.queued.notify_one();
    }

    /// Resolves once closing has started.
    fn closed(&self) -> Closed<'_> {
        Closed {
            notified: self.closed.notified(),
            stopping: &self.stopping,
        }
    }

    fn items(&self) -> MutexGuard<'_, Items> {
        // Poisoned only by a panic mid-push or mid-pop of a deque: still a valid deque.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an item without waiting and wakes the writer. Returns false if the
    /// connection is (now) closing; an overflow closes it as a slow consumer.
    fn push(&self, item: Outbound) -> bool {
        self.push_waking(item, true)
    }

    /// [`push`](Self::push), waking the writer only if `wake` (or the queue fills, see
    /// `try_send`); else whoever queued it wakes it later ([`Pusher::wake`]).
    fn push_waking(&self, item: Outbound, wake: bool) -> bool {
        if self.stopping.load(Ordering::Relaxed) {
            return false;
        }
        let weight = item.weight();
        let queued = self.bytes.fetch_add(weight, Ordering::Relaxed) + weight;
        // One item heavier than the bound still goes into an empty queue: a message of
        // `maxFrameBytes` is a bigger frame (its envelope), and the bound may be as small.
        if queued > self.max_bytes && queued != weight {
            self.bytes.fetch_sub(weight, Ordering::Relaxed);
            self.stop(Some(SLOW_CONSUMER));
            return false;
        }
        self.high_water.fetch_max(queued, Ordering::Relaxed);
        let wake = wake || queued * 2 >= self.max_bytes; // (see try_send)
        match self.try_send(item, wake) {
            Ok(()) => true,
            Err(refused) => {
                self.bytes.fetch_sub(weight, Ordering::Relaxed);
                if matches!(refused, Refused::Full) {
                    self.stop(Some(SLOW_CONSUMER));
                }
                false
            }
        }
    }

    /// Queues `last` whatever the bounds: a `goaway` and the close after it, once per
    /// connection and a few dozen bytes. Through [`push`](Self::push) a queue near its
    /// bound overflowed on them: a drain or a rebalance closed that client 1013 `slow
    /// consumer` (dropping its backlog and the goaway) instead of 1012 after its backlog.
    fn push_last(&self, last: impl IntoIterator<Item = Outbound>) -> bool {
        if self.stopping.load(Ordering::Relaxed) {
            return false;
        }
        {
            let mut items = self.items();
            if items.closed {
                return false;
            }
            for item in last {
                self.bytes.fetch_add(item.weight(), Ordering::Relaxed);
                items.queue.push_back(item);
            }
        }
        self.queued.notify_one();
        true
    }

    /// Appends an item if the queue has a slot and a consumer.
    fn try_send(&self, item: Outbound, mut wake: bool) -> Result<(), Refused> {
        {
            let mut items = self.items();
            if items.closed {
                return Err(Refused::Closed);
            }
            if items.queue.len() >= self.max_frames {
                return Err(Refused::Full);
            }
            items.queue.push_back(item);
            // A quiet item wakes the writer anyway once the writer's batch is full or the
            // queue half so: waiting for the window would only risk an overflow (a
            // burst, a gap filled from history) and save nothing more per syscall.
            wake = wake || items.queue.len() >= (self.max_frames / 2).clamp(1, writer::BATCH);
        }
        if wake {
            self.queued.notify_one();
        }
        Ok(())
    }
}

/// Why an item was not queued.
enum Refused {
    Full,
    Closed,
}

/// Producer handle of a connection's outbound queue; cheap to clone.
pub struct OutboundQueue {
    shared: Arc<Shared>,
}

impl Clone for OutboundQueue {
    fn clone(&self) -> Self {
        self.shared.items().senders += 1;
        OutboundQueue {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for OutboundQueue {
    fn drop(&mut self) {
        let last = {
            let mut items = self.shared.items();
            items.senders -= 1;
            items.senders == 0
        };
        if last {
            self.shared.queued.notify_one(); // the writer sees the end
        }
    }
}

/// Creates a queue bounded by `max_frames` items and `max_bytes` queued bytes.
pub fn queue(max_frames: usize, max_bytes: usize) -> (OutboundQueue, OutboundReceiver) {
    let shared = Arc::new(Shared::new(max_frames, max_bytes, false));
    (
        OutboundQueue {
            shared: shared.clone(),
        },
        OutboundReceiver { shared },
    )
}

impl OutboundQueue {
    /// Queues an item without waiting. Returns false if the connection is (now) closing;
    /// an overflow closes it as a slow consumer.
    pub fn push(&self, item: Outbound) -> bool {
        self.shared.push(item)
    }

    /// A handle that pushes like this queue for the length of one fan-out, without
    /// counting as one of its producers (a clone of the queue does, which takes its lock).
    pub fn pusher(&self) -> Pusher {
        Pusher(self.shared.clone())
    }

    /// Lets the fast path write to `wire` (the socket the writer writes through). What it
    /// writes is counted by the fan-out ([`Delivered::Written`]), the writer's own by the
    /// writer.
    pub fn attach(&self, wire: Arc<wire::Wire>) {
        let at = Arc::as_ptr(&wire).cast::<u8>().cast_mut();
        self.shared.items().fast = Some(wire);
        self.shared.wire_at.store(at, Ordering::Relaxed);
    }

    /// Whether one more item fits by count.
    fn has_slot(&self) -> bool {
        self.shared.items().queue.len() < self.shared.max_frames
    }

    /// Queues a ready frame.
    pub fn frame(&self, text: impl Into<Utf8Bytes>) -> bool {
        let text = text.into();
        match self.frame_now(&text) {
            Some(written) => written,
            None => self.push(Outbound::Frame(text)),
        }
    }

    /// Writes a ready frame to the socket at once if nothing is ahead of it: from the
    /// task that makes it (a reply, the welcome), without a wake-up of the writer. `None`
    /// when it must be queued; `Some(false)` when the connection is closing.
    fn frame_now(&self, text: &Utf8Bytes) -> Option<bool> {
        if self.is_closing() {
            return Some(false);
        }
        self.shared.write_frame_now(text.as_bytes())
    }

    /// Queues an item once there is room for it: waits while the queue holds too many
    /// bytes (or items) to take it, so the client's reading sets the pace. Only up to half
    /// the byte bound: the other half stays for live traffic, which never waits (a replay
    /// into a slow reader must not make the next live message an overflow). An item
    /// heavier than that goes into an empty queue. False if the connection closes first.
    pub async fn push_paced(&self, item: Outbound) -> bool {
        // Most replies: the client waits for them before sending more.
        if let Outbound::Frame(text) = &item {
            if let Some(written) = self.frame_now(text) {
                return written;
            }
        }
        let weight = item.weight();
        let fits = |q: &Self| {
            let queued = q.shared.bytes.load(Ordering::Relaxed);
            (queued == 0 || queued + weight <= q.shared.max_bytes / 2) && q.has_slot()
        };
        loop {
            if self.is_closing() {
                return false;
            }
            if fits(self) {
                let queued = self.shared.bytes.fetch_add(weight, Ordering::Relaxed) + weight;
                self.shared.high_water.fetch_max(queued, Ordering::Relaxed);
                return match self.shared.try_send(item, true) {
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
                _ = self.shared.closed() => return false,
                _ = drained => {}
            }
        }
    }

    /// A close handle for a connection whose frames the gateway does not speak (a
    /// forwarded one): [`goaway`](Self::goaway) just closes it.
    pub fn opaque() -> OutboundQueue {
        OutboundQueue {
            shared: Arc::new(Shared::new(1, 0, true)),
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
        let text = frame.into();
        let close = Outbound::Close(reason);
        let queued = match self.frame_now(&text) {
            Some(written) => written && self.shared.push_last([close]),
            None => self.shared.push_last([Outbound::Frame(text), close]),
        };
        if !queued {
            self.close(reason);
        }
        true
    }

    /// The client was heard from (a frame arrived) at `at_ms` on the node's clock.
    pub fn heard(&self, at_ms: u64) {
        self.shared.heard.store(at_ms, Ordering::Relaxed);
    }

    /// When the client was last heard from (see [`heard`](Self::heard)).
    pub fn heard_at(&self) -> u64 {
        self.shared.heard.load(Ordering::Relaxed)
    }

    /// Queues a ping. Unlike a message, a ping that finds the queue full is dropped, not
    /// an overflow: the client is being written to anyway. False if not queued.
    pub fn ping(&self) -> bool {
        !self.shared.stopping.load(Ordering::Relaxed)
            && self.shared.try_send(Outbound::Ping, true).is_ok()
    }

    /// Whether [`goaway`](Self::goaway) was called.
    pub fn told_to_go(&self) -> bool {
        self.shared.told.load(Ordering::Relaxed)
    }

    /// Asks the writer to close the socket; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        self.shared.stop(Some(reason));
    }

    /// Stops writing without a reason (the client left, or a command ended the
    /// connection): nothing more is queued.
    pub fn stop(&self) {
        self.shared.stop(None);
    }

    /// Resolves when the connection starts closing (through [`close`](Self::close) or
    /// [`stop`](Self::stop), which also stop producers).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.shared.closed()
    }

    /// Whether the connection is closing.
    pub fn is_closing(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
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
