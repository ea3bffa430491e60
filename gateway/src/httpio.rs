//! The accepted socket as hyper reads and writes it. The chat endpoint's `101 Switching
//! Protocols` is held back here instead of written: the connection's wire takes it as
//! pending bytes, and it goes out in one `sendmsg` with the connection's first frame (the
//! welcome). A connect then costs one loopback delivery and one wake-up of the client
//! fewer: the 101's own `writev` was 9% of the gateway's CPU in a churn of Redis
//! connects (perf), as much as a closing socket.
//!
//! Only the chat endpoint holds it back: its server always speaks first, so the 101 is
//! never held for long (the welcome is queued as the connection starts). A forwarded
//! upgrade, whose backend may wait for the client to speak, writes its 101 at once.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An accepted connection's socket under hyper.
pub struct HttpIo {
    tcp: TcpStream,
    hold: Arc<AtomicBool>,
    /// What hyper wrote once holding started: the 101's head, a few hundred bytes.
    held: Vec<u8>,
}

/// Told by the chat endpoint, as it answers 101, that the answer is to wait for the
/// connection's first frame.
#[derive(Clone)]
pub struct HoldHandshake(Arc<AtomicBool>);

impl HoldHandshake {
    /// Everything hyper writes from now on is held (see the module's notes).
    pub fn hold(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl HttpIo {
    /// The socket, and the switch that holds back what hyper writes next.
    pub fn new(tcp: TcpStream) -> (HttpIo, HoldHandshake) {
        let hold = Arc::new(AtomicBool::new(false));
        let io = HttpIo {
            tcp,
            hold: hold.clone(),
            held: Vec::new(),
        };
        (io, HoldHandshake(hold))
    }

    /// The socket and the bytes held back, still to be written before anything else.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.tcp, self.held)
    }

    fn holding(&self) -> bool {
        self.hold.load(Ordering::Relaxed)
    }
}

impl AsyncRead for HttpIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for HttpIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.holding() {
            self.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.holding() {
            let mut n = 0;
            for b in bufs {
                self.held.extend_from_slice(b);
                n += b.len();
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.holding() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), accepted.expect("accept").0)
    }

    /// Whether the peer has bytes to read now (loopback delivers within the write).
    fn readable_now(peer: &TcpStream) -> bool {
        let mut b = [0u8; 1];
        peer.try_read(&mut b).is_ok()
    }

    #[tokio::test]
    async fn writes_pass_until_held_then_wait_for_the_first_frame() {
        let (mut client, accepted) = pair().await;
        let (mut io, hold) = HttpIo::new(accepted);
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        io.flush().await.expect("flush");
        let mut got = [0u8; 19];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(
            &got, b"HTTP/1.1 200 OK\r\n\r\n",
            "not held: written at once"
        );

        hold.hold();
        let head = IoSlice::new(b"HTTP/1.1 101 Switching Protocols\r\n");
        let end = IoSlice::new(b"\r\n");
        let n = io.write_vectored(&[head, end]).await.expect("write");
        assert_eq!(n, head.len() + end.len(), "taken whole");
        io.flush().await.expect("flush");
        assert!(!readable_now(&client), "the 101 is held");
        let (tcp, held) = io.into_parts();
        assert_eq!(held, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        drop(tcp);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty(), "nothing went out: {rest:?}");
    }
}
