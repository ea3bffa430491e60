//! The socket of a connection, shared by tungstenite (which reads it, and writes the
//! writer's frames and its own pongs) and the fan-out fast path, which writes a live
//! message straight to the socket from the task that publishes it.
//!
//! A room's frame is the same bytes for every member (server frames are not masked): a
//! message's WebSocket frame, header included, is laid out once ([`Envelope::wire`]), and
//! the fast path writes those bytes with one `send`, with no per-member encoding or copy,
//! and no task woken. It runs only when
//! nothing else is on its way to the socket (see [`OutboundQueue::push`]): an empty
//! queue, an idle writer. Replies to commands take the same path.
//!
//! The stream never carries part of a frame followed by another frame: a write taken
//! here is taken whole. What the socket does not accept at once waits in `pending`, and
//! the next write (or flush) sends it first, in the same syscall: the fast path sends
//! pending bytes and its frame together (a new connection's held 101 and its welcome). A
//! write through [`WireIo`] arriving while something is pending waits instead
//! (tungstenite keeps its frames until then), so `pending` holds at most one such write.
//!
//! [`OutboundQueue::push`]: super::OutboundQueue::push

use super::order::Live;
use super::{Delivered, Items, Outbound, Shared};
use crate::engine::Envelope;
use bytes::Bytes;
use std::io::{self, IoSlice, Read};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A connection's socket and the bytes taken for it that it has not accepted yet.
#[derive(Debug)]
pub struct Wire {
    tcp: TcpStream,
    pending: Mutex<Vec<u8>>,
}

impl Wire {
    /// The socket, to be read and written through [`WireIo`] and written by the fast
    /// path of the connection's queue ([`OutboundQueue::attach`](super::OutboundQueue::attach)).
    pub fn new(tcp: TcpStream) -> Arc<Wire> {
        Wire::with_pending(tcp, Vec::new())
    }

    /// The socket with bytes to send before anything else: the chat endpoint's 101,
    /// held back to go out with the welcome (see [`HttpIo`](crate::httpio::HttpIo)).
    pub fn with_pending(tcp: TcpStream, pending: Vec<u8>) -> Arc<Wire> {
        Arc::new(Wire {
            tcp,
            pending: Mutex::new(pending),
        })
    }

    #[cfg(test)]
    pub(super) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        // Poisoned only by a panic while copying bytes: still a valid buffer.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the text frame of `payload` now: see [`try_parts`](Self::try_parts).
    pub(super) fn try_text(&self, payload: &[u8]) -> Option<bool> {
        let (head, head_len) = text_header(payload.len());
        self.try_parts(&head[..head_len], payload)
    }

    /// Writes a whole frame now (a message's [`Envelope::wire`]): see
    /// [`try_parts`](Self::try_parts).
    pub(super) fn try_frame(&self, frame: &[u8]) -> Option<bool> {
        self.try_parts(&[], frame)
    }

    /// Writes `head` then `body` now, behind whatever is pending (the held 101 of a new
    /// connection), in one syscall: `None` when the socket took nothing (the caller
    /// queues the frame), `Some(true)` when it took all of it, `Some(false)` when the
    /// rest waits in `pending` for the next flush.
    fn try_parts(&self, head: &[u8], body: &[u8]) -> Option<bool> {
        let mut pending = self.pending();
        // sendmsg rather than tokio's writev: a write on a file takes the file's position
        // lock and goes through the VFS first, ~10% of a delivery's CPU at 50 msgs/s
        // (perf). And straight to the socket rather than through tokio's `try_io`: its
        // check of tokio's readiness, which lives in an allocation of its own, was a cache
        // miss on every delivery of a fan-out (perf: a tenth of the fast path's user-space
        // time), and the send answers the same question. Tokio's readiness stays right:
        // a send that finds the socket full, here or in the writer, has the kernel report
        // the next edge, and the writer, which writes the rest through tokio, drops the
        // stale readiness when its own write meets the full socket. Any error but a full
        // socket also leaves it to the writer, whose own write then meets the error and
        // ends the connection as it always does.
        let sock = socket2::SockRef::from(&self.tcp);
        let sent = if pending.is_empty() && head.is_empty() {
            // One buffer: `send`, with no iovec for the kernel to copy in and walk
            // (~0.3 µs a delivery less than a `sendmsg` of header and frame, perf).
            sock.send(body)
        } else {
            let bufs = [
                IoSlice::new(&pending),
                IoSlice::new(head),
                IoSlice::new(body),
            ];
            sock.send_vectored(&bufs)
        };
        let n = sent.ok()?;
        if n == 0 {
            return None;
        }
        let total = pending.len() + head.len() + body.len();
        if n == total {
            if !pending.is_empty() {
                *pending = Vec::new();
            }
            return Some(true);
        }
        // What the socket did not take, in order: the rest of the pending bytes, then of
        // the frame.
        let mut rest = Vec::with_capacity(total - n);
        let mut skip = n;
        for part in [&pending[..], head, body] {
            let from = skip.min(part.len());
            rest.extend_from_slice(&part[from..]);
            skip -= from;
        }
        *pending = rest;
        Some(false)
    }

    /// Sends what is pending; ready once nothing is.
    fn drain(&self, pending: &mut Vec<u8>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !pending.is_empty() {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // The memory goes back: most of the time nothing is pending.
        *pending = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl Shared {
    /// The fast path: writes a live message to the socket at once if nothing is ahead
    /// of it (an empty queue, an idle writer, nothing pending in the wire) and its room
    /// takes it now. `None` when it must be queued instead.
    pub(super) fn write_now(&self, env: &Arc<Envelope>) -> Option<Delivered> {
        let mut guard = match self.nothing_ahead() {
            Ok(guard) => guard,
            Err(None) => return None,
            Err(Some(_)) => return Some(Delivered::Closing),
        };
        let items = &mut *guard;
        let slot = match items.order.live(env) {
            Live::Write(slot) => slot,
            Live::Skip => return Some(Delivered::Skipped),
            Live::Hold => return None,
        };
        let whole = items.fast.as_ref()?.try_frame(env.wire())?;
        if whole {
            items.order.written(slot, env);
        } else {
            // The rest goes out with the writer's next flush, which a close may cut
            // short: the position stands only once it went.
            items.order.written_unsent(slot, env);
            self.rest_to_writer(guard);
        }
        Some(Delivered::Written)
    }

    /// The fast path of a reply: writes a ready frame at once under the same condition as
    /// [`write_now`](Self::write_now) (nothing ahead of it), so the socket loop that made
    /// the reply sends it without waking the writer. `None` when it must be queued;
    /// `Some(false)` when the connection is closing.
    pub(super) fn write_frame_now(&self, text: &[u8]) -> Option<bool> {
        let guard = match self.nothing_ahead() {
            Ok(guard) => guard,
            Err(answer) => return answer,
        };
        if !guard.fast.as_ref()?.try_text(text)? {
            self.rest_to_writer(guard);
        }
        Some(true)
    }

    /// The queue's items, locked, when a fast-path write may go: the fast path attached,
    /// the queue empty and the writer idle. Otherwise the caller's answer: `None` (queue
    /// it instead) or `Some(false)` (closed).
    fn nothing_ahead(&self) -> Result<MutexGuard<'_, Items>, Option<bool>> {
        let items = self.items();
        if items.fast.is_none() {
            return Err(None);
        }
        if items.closed {
            return Err(Some(false));
        }
        if items.busy || !items.queue.is_empty() {
            return Err(None);
        }
        Ok(items)
    }

    /// The socket took part of a frame: the writer sends the rest before anything else.
    fn rest_to_writer(&self, mut items: MutexGuard<'_, Items>) {
        items.queue.push_back(Outbound::Flush);
        drop(items);
        self.queued.notify_one();
    }
}

/// The handle tungstenite reads and writes the socket through.
pub struct WireIo(pub Arc<Wire>);

impl AsyncRead for WireIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &self.0.tcp;
        let sock = socket2::SockRef::from(tcp);
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            let mut got = None;
            // A read shorter than the buffer emptied the socket. Reported to tokio as
            // `WouldBlock`, it drops the socket's read readiness (as tokio's own
            // `poll_read` does; `try_read` does not): otherwise the next read, once the
            // frame is handled, would be a syscall that finds nothing. Readiness is only
            // dropped if no new event came meanwhile, so no data is missed.
            let read = tcp.try_io(Interest::READABLE, || {
                let n = (&*sock).read(unfilled)?;
                got = Some(n);
                if n > 0 && n < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            let n = match (got, read) {
                (Some(n), _) | (None, Ok(n)) => n,
                (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (None, Err(e)) => return Poll::Ready(Err(e)),
            };
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for WireIo {
    /// Takes all of `buf` once nothing is pending (see the module's notes).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let wire = &self.0;
        let mut pending = wire.pending();
        // What is pending goes first, with this write in the same syscall (the held 101
        // and the welcome: one delivery to the client, not two); this write is taken
        // only once all of what was pending went.
        while !pending.is_empty() {
            ready!(wire.tcp.poll_write_ready(cx))?;
            let sock = socket2::SockRef::from(&wire.tcp);
            let bufs = [IoSlice::new(&pending), IoSlice::new(buf)];
            match wire
                .tcp
                .try_io(Interest::WRITABLE, || sock.send_vectored(&bufs))
            {
                Ok(n) if n >= pending.len() => {
                    let taken = n - pending.len();
                    *pending = buf[taken..].to_vec();
                    return Poll::Ready(Ok(buf.len()));
                }
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match wire.tcp.try_write(buf) {
            Ok(n) => pending.extend_from_slice(&buf[n..]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => pending.extend_from_slice(buf),
            Err(e) => return Poll::Ready(Err(e)),
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wire = &self.0;
        let mut pending = wire.pending();
        wire.drain(&mut pending, cx)
    }

    /// Sends what is pending. The socket itself closes when the connection drops it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Appends the text frame of `payload` to `buf`.
pub(super) fn encode_text(buf: &mut Vec<u8>, payload: &[u8]) {
    let (head, n) = text_header(payload.len());
    buf.reserve(n + payload.len());
    buf.extend_from_slice(&head[..n]);
    buf.extend_from_slice(payload);
}

/// `text` as a whole text frame, and `text` itself as the tail of the same bytes (see
/// [`Envelope::new`]).
pub fn text_frame(text: &str) -> (Bytes, Utf8Bytes) {
    let mut buf = Vec::with_capacity(text.len() + 10);
    encode_text(&mut buf, text.as_bytes());
    let head = buf.len() - text.len();
    let wire = Bytes::from(buf);
    // The tail is `text`'s bytes: valid UTF-8, so the copy is never made.
    let tail = Utf8Bytes::try_from(wire.slice(head..)).unwrap_or_else(|_| text.into());
    (wire, tail)
}

/// The header of a final, unmasked text frame of `len` bytes, as tungstenite writes it,
/// and how many of its bytes are used.
fn text_header(len: usize) -> ([u8; 10], usize) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut head = [0u8; 10];
    // Ten bytes hold every header without a mask: the write cannot run short.
    let formatted = header.format(len as u64, &mut &mut head[..]).is_ok();
    debug_assert!(formatted);
    (head, header.len(len as u64))
}

#[cfg(test)]
mod tests {
    use super::{encode_text, text_frame};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    /// The frame written by hand is the one tungstenite writes, in each length form.
    #[test]
    fn text_frames_match_tungstenite() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'a'; len];
            let mut ours = Vec::new();
            encode_text(&mut ours, &payload);
            let mut theirs = Vec::new();
            Frame::message(payload, OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .expect("format");
            assert_eq!(ours, theirs, "length {len}");
        }
    }

    /// A message's wire frame is the frame tungstenite writes for its text, and its
    /// text is the frame's tail, not a copy.
    #[test]
    fn a_text_frame_holds_its_text_as_its_tail() {
        for len in [0usize, 125, 126, 70_000] {
            let text = "é".repeat(len / 2);
            let (wire, tail) = text_frame(&text);
            let mut theirs = Vec::new();
            Frame::message(text.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .expect("format");
            assert_eq!(&wire[..], &theirs[..], "length {len}");
            assert_eq!(tail.as_str(), text);
            let head = wire.len() - text.len();
            assert_eq!(tail.as_ptr(), wire[head..].as_ptr(), "the same bytes");
        }
    }
}
