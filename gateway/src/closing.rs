//! The end of the close handshake (RFC 6455, 7.1.1) when the gateway closed a connection:
//! the client may still be sending. A socket closed with bytes unread makes the kernel
//! answer with a reset, and a client that meets it (while writing, or on a system that
//! drops what it had received on a reset) may never read the close frame it was sent.
//! So the socket is read, and what arrives dropped, until the client's own close frame or
//! the end of the stream, for at most [`CLOSE_HANDSHAKE_WAIT`].
//!
//! Where the gateway refused what the client sent (a message over `maxFrameBytes`,
//! invalid UTF-8, too many frames, a broken frame), tungstenite reads no further: its
//! stream ends at its first error. The socket is then read raw, past tungstenite, up to
//! [`DISCARD_LIMIT`] bytes: what is left of a big message and what the client had queued
//! behind it. A client that keeps sending beyond that gets the reset, as before.

use futures_util::{Stream, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

/// How long a connection the gateway closed is still read for the client's close frame.
pub const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(1);

/// Most bytes read raw and dropped from a refused client (see the module docs): what it
/// costs the gateway is a millisecond of reads at most, and the socket for a second.
pub const DISCARD_LIMIT: usize = 1 << 20;

/// Reads `stream` and then, where tungstenite stopped reading, `raw` (the same socket), as
/// the module docs say.
pub async fn finish<S, R>(mut stream: S, raw: Option<R>)
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    R: AsyncRead + Unpin,
{
    let until = Instant::now() + CLOSE_HANDSHAKE_WAIT;
    if !hear_close(&mut stream, until).await {
        if let Some(mut raw) = raw {
            discard(&mut raw, until).await;
        }
    }
}

/// Reads and drops messages until the client's close frame (true) or until the stream
/// ends or `until` passes (false).
pub async fn hear_close<S>(stream: &mut S, until: Instant) -> bool
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, stream.next()).await {
        if msg.is_close() {
            return true;
        }
    }
    false
}

/// Reads and drops messages until the stream ends or `until` passes: the gateway as a
/// client (a forwarding route's upstream connection), having sent its close frame, waits
/// for the server's close frame and for the server to close the socket, which then keeps
/// the TIME_WAIT (RFC 6455, 7.1.1). Shut right after the close frame, the gateway's
/// socket answered the upstream's close reply with a reset.
pub async fn hear_end<S>(stream: &mut S, until: Instant)
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, stream.next()).await {}
}

/// Reads and drops bytes until the end of the stream, an error, `until`, or
/// [`DISCARD_LIMIT`] bytes.
pub async fn discard<R: AsyncRead + Unpin>(raw: &mut R, until: Instant) {
    let mut buf = vec![0; 16 * 1024];
    let mut left = DISCARD_LIMIT;
    while left > 0 {
        let want = left.min(buf.len());
        match tokio::time::timeout_at(until, raw.read(&mut buf[..want])).await {
            Ok(Ok(n)) if n > 0 => left -= n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests;
