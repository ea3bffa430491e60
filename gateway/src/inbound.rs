//! The frames a client sends, counted below tungstenite.
//!
//! tungstenite answers pings and joins a message's fragments before the connection sees
//! anything, so the message rate (`limits.messageRate`) counts whole commands only. A
//! client sending pings, or a message's empty fragments that never end, at the speed of
//! its link kept a gateway core busy on its own and was never refused (one such client:
//! 500,000 pings or 7 million empty fragments a second, a whole core). [`Metered`] sits
//! between tungstenite and the socket (a chat client's, and a forwarding route's
//! client's, whose fragments never reach the upstream either), finds the frame headers in
//! the bytes read ([`FrameScan`]), and takes a token for each frame that is not a whole
//! message (those are commands, for the message rate) from a bucket of `limits.frameRate`
//! a second and `limits.frameBurst` at once; a read that finds the bucket short fails with
//! [`TooManyFrames`], which the connection turns into a 1008 close
//! ([`disconnect::TOO_MANY_FRAMES`]). At the defaults a client pinging just under the
//! budget (480 a second, 100-byte pings) cost the gateway 1% of a core; the floods above
//! are closed after their first thousand.

use crate::disconnect::{self, CloseReason};
use crate::ratelimit::TokenBucket;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite;

/// Where a byte stream of WebSocket frames (RFC 6455, 5.2) is: what its next byte means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FrameScan {
    /// The next byte starts a frame (FIN, RSV and opcode).
    #[default]
    Head,
    /// The next byte holds the mask bit and the 7-bit length.
    Length,
    /// `left` bytes of the extended length still to come.
    Extended { left: u8, masked: bool, len: u64 },
    /// Bytes of the masking key and payload before the next frame.
    Skip(u64),
}

impl FrameScan {
    /// Moves over `bytes`, which follow what was fed before; returns how many frames
    /// other than whole messages start in them (pings, pongs, fragments, close
    /// frames). A payload is skipped whole, not read byte by byte.
    pub fn feed(&mut self, mut bytes: &[u8]) -> u32 {
        let mut frames = 0u32;
        while let Some((&b, rest)) = bytes.split_first() {
            if let FrameScan::Skip(n) = *self {
                let k = usize::try_from(n).map_or(bytes.len(), |n| n.min(bytes.len()));
                bytes = &bytes[k..];
                // k ≤ n: what is left of the payload, if anything.
                *self = FrameScan::body(n - k as u64, false);
                continue;
            }
            // A whole message (FIN set, opcode 1 or 2) is a command, which the message
            // rate counts (on the chat endpoint a binary one closes the connection; a
            // forwarding route's upstream paces it); every other frame is counted here.
            if *self == FrameScan::Head && !matches!(b & 0x8f, 0x81 | 0x82) {
                frames = frames.saturating_add(1);
            }
            *self = self.after(b);
            bytes = rest;
        }
        frames
    }

    /// Where a frame's header is after its next byte `b` (a payload is skipped by
    /// [`feed`](Self::feed), not here).
    fn after(self, b: u8) -> FrameScan {
        match self {
            FrameScan::Head => FrameScan::Length,
            FrameScan::Length => {
                let masked = b & 0x80 != 0;
                match b & 0x7f {
                    126 => FrameScan::extended(2, masked),
                    127 => FrameScan::extended(8, masked),
                    n => FrameScan::body(u64::from(n), masked),
                }
            }
            FrameScan::Extended { left, masked, len } => {
                // At most 8 bytes: no bit of the length is shifted out.
                let len = len << 8 | u64::from(b);
                match left {
                    1 => FrameScan::body(len, masked),
                    _ => FrameScan::Extended {
                        left: left - 1,
                        masked,
                        len,
                    },
                }
            }
            skip @ FrameScan::Skip(_) => skip,
        }
    }

    fn extended(left: u8, masked: bool) -> FrameScan {
        FrameScan::Extended {
            left,
            masked,
            len: 0,
        }
    }

    /// After a frame's length: its masking key (if any) and payload, then the next frame.
    fn body(len: u64, masked: bool) -> FrameScan {
        match len.saturating_add(if masked { 4 } else { 0 }) {
            0 => FrameScan::Head,
            n => FrameScan::Skip(n),
        }
    }
}

/// The error a read returns when the client's frames outran its budget.
#[derive(Debug)]
pub struct TooManyFrames;

impl std::fmt::Display for TooManyFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("more frames than limits.frameRate and limits.frameBurst allow")
    }
}

impl std::error::Error for TooManyFrames {}

/// Whether tungstenite failed because the client sent too many frames.
fn too_many_frames(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io)
        if io.get_ref().is_some_and(|inner| inner.is::<TooManyFrames>()))
}

/// Why a read that failed for what the peer sent closes its connection; `None` where the
/// socket failed or the peer went away without a close frame (nothing to refuse).
pub fn refusal(e: &tungstenite::Error) -> Option<CloseReason> {
    use tungstenite::error::ProtocolError as P;
    match e {
        tungstenite::Error::Capacity(_) => Some(disconnect::MESSAGE_TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(disconnect::INVALID_UTF8),
        tungstenite::Error::Protocol(
            P::NonZeroReservedBits
            | P::UnmaskedFrameFromClient
            | P::MaskedFrameFromServer
            | P::FragmentedControlFrame
            | P::ControlFrameTooBig
            | P::UnknownControlFrameType(_)
            | P::UnknownDataFrameType(_)
            | P::UnexpectedContinueFrame
            | P::ExpectedFragment(_)
            | P::InvalidOpcode(_)
            | P::InvalidCloseSequence,
        ) => Some(disconnect::PROTOCOL_ERROR),
        e if too_many_frames(e) => Some(disconnect::TOO_MANY_FRAMES),
        _ => None,
    }
}

/// A socket whose reads are counted in frames against a token bucket; writes pass through.
pub struct Metered<IO> {
    io: IO,
    scan: FrameScan,
    /// `None`: `limits.frameRate` is 0, nothing is counted.
    bucket: Option<TokenBucket>,
    /// The bucket ran short: every read fails from now on.
    refused: bool,
}

impl<IO> Metered<IO> {
    /// `io` allowed `rate` counted frames a second (0: no limit) and `burst` at once;
    /// `read_ahead` is what was read from it already (after the upgrade request), counted
    /// now (too many frames in it and the first read fails).
    pub fn new(io: IO, rate: f64, burst: u32, read_ahead: &[u8]) -> Self {
        let mut metered = Metered {
            io,
            scan: FrameScan::Head,
            bucket: (rate > 0.0).then(|| TokenBucket::new(rate, burst)),
            refused: false,
        };
        metered.count(read_ahead);
        metered
    }

    /// The socket itself, to be read past the meter once the connection is closed
    /// ([`closing`](crate::closing)).
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    fn count(&mut self, bytes: &[u8]) {
        let Some(bucket) = &mut self.bucket else {
            return;
        };
        match self.scan.feed(bytes) {
            0 => {}
            n => self.refused = !bucket.take_n_at(n, std::time::Instant::now()),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Metered<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.refused {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            this.count(&buf.filled()[before..]);
        }
        // What came with the frame that broke the budget is not handed on. tungstenite's
        // stream ends at its first error; the connection sends its 1008 close frame and
        // shuts the socket.
        Poll::Ready(match this.refused {
            true => Err(io::Error::other(TooManyFrames)),
            false => Ok(()),
        })
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Metered<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
