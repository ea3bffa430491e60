//! The writer: the one task that writes a connection's queue to its socket, in order,
//! never a `(room, seq)` twice, holding a catching-up room's live messages until its
//! replay is out (the rules are in [`order`](super::order)); with the write timeout. The
//! pings come through the queue (the node's [`heartbeat`](crate::heartbeat)).

use super::order::Live;
use super::wire::{encode_text, Wire, WireIo};
use super::{Outbound, OutboundReceiver, Shared};
use crate::disconnect::{CloseReason, SLOW_CONSUMER, WRITE_TIMEOUT};
use crate::engine::Envelope;
use crate::protocol::StreamPosition;
use futures_util::{Sink, SinkExt};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};

/// Counts a delivery the writer made (metrics): the message, and whether it went out live
/// (its age is a delivery latency) rather than replayed from history (its age is how old
/// the backlog was: an hour-old message a rejoin replays is no slow delivery).
pub type OnDelivered = Arc<dyn Fn(&Envelope, bool) + Send + Sync>;

/// What the writer observed when it stopped.
#[derive(Debug, Default)]
pub struct WriterOutcome {
    /// Last position written per room (where a resume would start), for the rooms whose
    /// epoch the writer learned: only messages whose frames reached the socket whole (a
    /// batch or a frame the close cut short is not in it).
    pub positions: HashMap<Arc<str>, StreamPosition>,
    /// Messages written to the socket.
    pub delivered: u64,
    /// The socket, where the connection has one: read past tungstenite at the end of the
    /// close handshake ([`closing`](crate::closing)).
    pub wire: Option<Arc<Wire>>,
}

/// Settings of the writer.
pub struct WriterSettings {
    /// The heartbeat period: a write not done within two closes the connection.
    pub heartbeat: Duration,
    /// Called once per written message (metrics).
    pub on_delivered: OnDelivered,
}

/// Most items written before a flush.
pub(super) const BATCH: usize = 64;

/// A batch stops taking items once its frames reach this many bytes. Items taken out of
/// the queue no longer count against its byte bound, so without this a batch of large
/// frames (64 of `limits.maxFrameBytes`) would hold many times the queue's bound on top of
/// it, and a slow reader's close frame would wait behind all of it.
pub(super) const BATCH_BYTES: usize = 64 * 1024;

/// Writes queued items to `sink` until the connection closes; enforces the write timeout
/// (two heartbeat periods). Sends the close frame itself.
///
/// An async block rather than an async fn: an async fn keeps a second copy of its
/// arguments in its state, which every connection's task would carry.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn run_writer<S>(
    mut sink: S,
    mut rx: OutboundReceiver,
    settings: WriterSettings,
) -> impl Future<Output = WriterOutcome>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    async move {
        let write_timeout = settings.heartbeat * 2;
        let shared = rx.shared.clone();
        let wire = shared.items().fast.clone();
        // Every write below is boxed: its futures (the batch, the write timeout's timer) would
        // otherwise be part of this task for the connection's whole life, and most of the
        // time the connection is idle. One allocation per batch is cheap beside its syscall.
        // Closing wakes the queue's waiter ([`OutboundReceiver::next`] then ends), so the
        // task holds no future of the queue's `closed` either (72 bytes).
        while let Some(item) = rx.next().await {
            let texts = Texts {
                wire: wire.as_ref(),
                buf: Vec::new(),
            };
            let batch = write_batch(&mut sink, texts, &mut rx, item, &settings);
            let written = Box::pin(within(batch, write_timeout, &shared)).await;
            let Some(written) = written else { break };
            shared.drained.notify_waiters();
            if let Err(e) = written {
                // The queue stops with the writer: the socket loop waits on it, and the
                // heartbeat sees it closed. Left open, a connection whose writer had
                // ended lived on as long as its client sent anything now and then.
                shared.stop(failed_write_reason(&e));
                break;
            }
            rx.settle();
        }
        // The fast path lets go of the socket before the close frame goes out.
        rx.close_queue();
        match shared.reason.get() {
            Some(reason) => Box::pin(send_close(&mut sink, *reason, write_timeout)).await,
            None => Box::pin(answer_close(&mut sink)).await,
        }
        rx.shared.drained.notify_waiters();
        let mut items = rx.shared.items();
        WriterOutcome {
            positions: items.order.positions(),
            delivered: items.order.delivered,
            wire,
        }
    }
}

/// Why a failed write closes the connection: tungstenite's write buffer full (of the
/// pongs to a client that pings but does not read) is a slow consumer; otherwise the
/// socket failed, the client is gone, and the close counts as the client's.
fn failed_write_reason(e: &Error) -> Option<CloseReason> {
    matches!(e, Error::WriteBufferFull(_)).then_some(SLOW_CONSUMER)
}

/// How long the close frame may wait where waiting for the client is pointless.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Sends the close frame, behind what the socket still holds for the client. It is a write
/// like any other and gets the write timeout: a client that keeps reading (a slow consumer,
/// one whose replay was cut) gets it behind its backlog, which can take seconds to read
/// through the kernel's buffers. Where waiting is pointless or holds up a drain
/// ([`CloseReason::waits_for_the_reader`]) it gets [`CLOSE_GRACE`].
async fn send_close<S>(sink: &mut S, reason: CloseReason, write_timeout: Duration)
where
    S: Sink<Message, Error = Error> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(reason.code),
        reason: reason.reason.into(),
    };
    let limit = if reason.waits_for_the_reader() {
        write_timeout
    } else {
        CLOSE_GRACE
    };
    let send = sink.send(Message::Close(Some(frame)));
    let _ = tokio::time::timeout(limit, send).await;
}

/// Sends tungstenite's answer to the client's close frame, which it queues when it reads
/// the frame and writes on the next write or flush: once the client closed, nothing else
/// writes, and the client saw its socket end unanswered (a browser reports such a close
/// as 1006, not clean). Where the socket failed instead, there is nothing to flush.
async fn answer_close<S>(sink: &mut S)
where
    S: Sink<Message, Error = Error> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.flush()).await;
}

/// Runs `write`; `None` if the connection closes first or the write does not complete
/// within `limit` (which closes it with [`WRITE_TIMEOUT`]). A client that stopped reading
/// blocks a write (its TCP window is shut) while it may still be sending, so the idle
/// check cannot see it. Usually the socket takes the bytes at once: then no timer is armed.
async fn within<F: Future>(write: F, limit: Duration, shared: &Shared) -> Option<F::Output> {
    tokio::pin!(write);
    match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(r) => Some(r),
        Poll::Pending => tokio::select! {
            biased;
            _ = shared.closed() => None,
            _ = tokio::time::sleep(limit) => {
                shared.stop(Some(WRITE_TIMEOUT));
                None
            }
            r = &mut write => Some(r),
        },
    }
}

/// Writes `first` and whatever else is queued (up to [`BATCH`] items or [`BATCH_BYTES`]),
/// then flushes once.
async fn write_batch<S>(
    sink: &mut S,
    mut texts: Texts<'_>,
    rx: &mut OutboundReceiver,
    first: Outbound,
    settings: &WriterSettings,
) -> Result<(), Error>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    let mut next = Some(first);
    let mut n = 0;
    while let Some(item) = next.take() {
        if let Outbound::Close(reason) = item {
            texts.finish(sink, &rx.shared).await?;
            rx.shared.stop(Some(reason));
            return Ok(());
        }
        let weight = item.weight();
        let res = write_item(sink, &mut texts, &rx.shared, item, settings).await;
        rx.shared.bytes.fetch_sub(weight, Ordering::Relaxed);
        res?;
        if rx.shared.items().order.held_bytes > rx.shared.max_bytes {
            // Live messages pile up behind a catch-up faster than the client reads.
            rx.shared.stop(Some(SLOW_CONSUMER));
            return Ok(());
        }
        n += 1;
        if n < BATCH && texts.buf.len() < BATCH_BYTES {
            next = rx.try_next().ok();
        }
    }
    texts.finish(sink, &rx.shared).await
}

/// A batch's text frames. With a wire (the socket itself) they are encoded into one
/// buffer, written in one go at the end of the batch: tungstenite's write buffer, which
/// keeps its largest size for the connection's life, then only ever holds pings, pongs
/// and the close frame. Without one (a socket that is not a wire) they go to the sink.
struct Texts<'a> {
    wire: Option<&'a Arc<Wire>>,
    buf: Vec<u8>,
}

impl Texts<'_> {
    async fn write<S>(&mut self, sink: &mut S, text: Utf8Bytes) -> Result<(), Error>
    where
        S: Sink<Message, Error = Error> + Unpin,
    {
        match self.wire {
            Some(_) => {
                encode_text(&mut self.buf, text.as_bytes());
                Ok(())
            }
            None => sink.feed(Message::Text(text)).await,
        }
    }

    /// A message: its whole frame as it is, into the buffer.
    async fn write_msg<S>(&mut self, sink: &mut S, env: &Envelope) -> Result<(), Error>
    where
        S: Sink<Message, Error = Error> + Unpin,
    {
        match self.wire {
            Some(_) => {
                self.buf.extend_from_slice(env.wire());
                Ok(())
            }
            None => sink.feed(Message::Text(env.frame.clone())).await,
        }
    }

    /// Writes the buffer, then flushes the sink (its own frames, and what waits in the
    /// wire): ready once everything is on the socket. Only then do the positions of what
    /// the batch took stand ([`Order::sent`](super::order::Order::sent)): a batch cut
    /// short (the write timeout, a close) leaves them to be put back at the end, so the
    /// session saved then does not skip what never reached the client.
    async fn finish<S>(&mut self, sink: &mut S, shared: &Shared) -> Result<(), Error>
    where
        S: Sink<Message, Error = Error> + Unpin,
    {
        if let Some(wire) = self.wire {
            if !self.buf.is_empty() {
                WireIo(wire.clone()).write_all(&self.buf).await?;
                self.buf = Vec::new();
            }
        }
        sink.flush().await?;
        shared.items().order.sent();
        Ok(())
    }
}

/// Writes one item: what the ordering rules let through, decided under the queue's lock
/// and written after it.
async fn write_item<S>(
    sink: &mut S,
    texts: &mut Texts<'_>,
    shared: &Shared,
    item: Outbound,
    settings: &WriterSettings,
) -> Result<(), Error>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    match item {
        Outbound::Frame(f) => return texts.write(sink, f).await,
        // In tungstenite's buffer until the batch's flush, after the batch's texts.
        Outbound::Ping => return sink.feed(Message::Ping(Default::default())).await,
        _ => {}
    }
    let live = !matches!(item, Outbound::Replay { .. });
    let msgs = {
        let mut items = shared.items();
        let order = &mut items.order;
        match item {
            Outbound::Frame(_) | Outbound::Ping => return Ok(()), // written above
            Outbound::Msg(env) => match order.live(&env) {
                Live::Write(slot) => {
                    order.written_unsent(slot, &env); // on the socket at the batch's flush
                    vec![env]
                }
                Live::Hold => {
                    order.hold(env);
                    return Ok(());
                }
                Live::Skip => return Ok(()),
            },
            Outbound::BeginCatchup(room) => {
                order.begin_catchup(room);
                return Ok(());
            }
            Outbound::Replay { room, from, msgs } => order.replay(room, from, msgs),
            Outbound::Release(room) => order.release(room),
            Outbound::Forget(room) => {
                order.forget(&room);
                return Ok(());
            }
            // The batch's flush sends what is pending; a close is handled by write_batch.
            Outbound::Flush | Outbound::Close(_) => return Ok(()),
        }
    };
    for env in &msgs {
        texts.write_msg(sink, env).await?;
        (settings.on_delivered)(env, live);
    }
    Ok(())
}
