//! The pipe of one forwarded connection: a relay per direction, each awaiting its write
//! before reading on (backpressure), an idle timeout over both, the client's token held
//! to its expiry and its key, and the close passed on with its code to whichever side is
//! still there.

use super::{Route, RouteSlot, Upstream};
use crate::auth::Identity;
use crate::closing;
use crate::disconnect::{self, CloseReason};
use crate::inbound::Metered;
use crate::node::{Node, Slots};
use crate::outbound::OutboundQueue;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How one direction of a pipe ended.
enum End {
    /// The sender closed, with this frame (passed on to the other side).
    Closed(Option<CloseFrame>),
    /// The sender's socket failed.
    ReadFailed,
    /// The sender broke a limit or the protocol: a message over the route's
    /// `maxFrameBytes`, invalid UTF-8, a broken frame, or (the client) more pings and
    /// fragments than `limits.frameRate` allows.
    Refused(CloseReason),
    /// The receiving side could not be written.
    WriteFailed,
    /// The receiving side took nothing for two heartbeat periods (it stopped reading).
    WriteTimedOut,
    /// Nothing in either direction for the route's idle timeout.
    Idle,
    /// The gateway closed the connection (drain, rebalance, the server API, the client's
    /// token expired or its key was removed), with this frame for both sides.
    Evicted(Option<CloseFrame>),
}

/// Milliseconds since `start` of the last frame in either direction.
struct Activity {
    start: std::time::Instant,
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing happened for `limit` (never, for a zero limit).
    async fn idle_for(&self, limit: Duration) {
        if limit.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let now = self.start.elapsed().as_millis() as u64;
            let quiet =
                Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)));
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

async fn relay<R, W>(
    mut from: R,
    to: &mut W,
    node: &Node,
    route: &str,
    dir: &str,
    activity: &Activity,
) -> End
where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    W: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let frames = node.metrics.forward_frames.with_label_values(&[route, dir]);
    let bytes = node.metrics.forward_bytes.with_label_values(&[route, dir]);
    // As a chat connection's: nothing waits on a socket forever. Without it a client that
    // read nothing but kept sending pings (each one activity) held its slots, the route's
    // and the upstream connection for good.
    let write_timeout = node.config.heartbeat.interval * 2;
    while let Some(msg) = from.next().await {
        activity.touch();
        let msg = match msg {
            Ok(Message::Close(frame)) => return End::Closed(frame),
            Ok(m) => m,
            Err(e) => {
                return crate::inbound::refusal(&e).map_or(End::ReadFailed, End::Refused);
            }
        };
        frames.inc();
        bytes.inc_by(msg.len() as u64);
        // Awaiting the write is the backpressure: nothing more is read meanwhile.
        match tokio::time::timeout(write_timeout, to.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return End::WriteFailed,
            Err(_) => return End::WriteTimedOut,
        }
    }
    End::ReadFailed
}

/// Resolves when the client's token no longer holds, as a chat connection's: it expired
/// (`auth.jwt.leeway` after its `exp`: 4401), or the JWKS key that verified it was removed
/// (4403, seen within one `auth.jwt.reloadInterval` of the reload that removed it).
/// Never for a token without either (insecure mode, a single configured key).
async fn token_lapses(node: &Node, identity: &Identity) -> CloseReason {
    let leeway = node.config.auth.jwt.leeway.as_millis() as u64;
    let expiry = async {
        match identity.expires_at {
            Some(exp) => {
                let at = exp.saturating_mul(1000).saturating_add(leeway);
                let wait = at.saturating_sub(crate::engine::now_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                disconnect::TOKEN_EXPIRED
            }
            None => std::future::pending().await,
        }
    };
    let revoked = async {
        let Some(kid) = identity.kid.as_deref() else {
            return std::future::pending().await;
        };
        let mut every = tokio::time::interval(node.config.auth.jwt.reload_interval);
        loop {
            every.tick().await;
            if !node.auth.has_kid(kid) {
                return disconnect::KEY_REVOKED;
            }
        }
    };
    tokio::select! {
        reason = expiry => reason,
        reason = revoked => reason,
    }
}

fn close_frame(reason: CloseReason) -> Option<CloseFrame> {
    Some(CloseFrame {
        code: CloseCode::from(reason.code),
        reason: reason.reason.into(),
    })
}

pub(super) async fn pipe<C>(
    node: Arc<Node>,
    route: Arc<Route>,
    client: WebSocketStream<Metered<C>>,
    upstream: Upstream,
    identity: &Identity,
    mut slots: (Slots, RouteSlot),
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = route.cfg.name.clone();
    // Registered like a chat connection so drain, rebalance and the server API's
    // disconnect close it too (close 1012 on a drain: a goaway cannot be put into a stream
    // the gateway does not speak).
    let handle = OutboundQueue::opaque();
    let id = node.register(handle.clone(), &identity.user, None);
    slots.0.registered = Some(id);
    // An accepted upgrade as a chat connection's is: its refusals count in
    // upgrades_rejected_total, and the refusal-ratio alert divides by both.
    node.metrics.accepted.inc();
    let gauge = node.metrics.forward_connections.with_label_values(&[&name]);
    gauge.inc();
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let activity = Activity {
        start: std::time::Instant::now(),
        last: AtomicU64::new(0),
    };
    let outcome = tokio::select! {
        end = relay(&mut c_rx, &mut u_tx, &node, &name, "up", &activity) => (true, end),
        end = relay(&mut u_rx, &mut c_tx, &node, &name, "down", &activity) => (false, end),
        _ = activity.idle_for(route.cfg.idle_timeout) => (false, End::Idle),
        reason = token_lapses(&node, identity) => (false, End::Evicted(close_frame(reason))),
        _ = handle.closed() => {
            let reason = handle.close_reason().unwrap_or(disconnect::SHUTTING_DOWN);
            (false, End::Evicted(close_frame(reason)))
        }
    };
    // The client closed, or its socket failed: nothing of it is left to read.
    let client_ended = matches!(outcome, (true, End::Closed(_) | End::ReadFailed));
    // The same of the upstream.
    let upstream_ended = matches!(outcome, (false, End::Closed(_) | End::ReadFailed));
    // Pass the close on, with its code, to whichever side is still there.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        match outcome {
            (true, End::Closed(frame)) => {
                // tungstenite's answer to the client's close goes out with a flush.
                let _ = c_tx.flush().await;
                let _ = u_tx.send(Message::Close(frame)).await;
            }
            (false, End::Closed(frame)) | (_, End::Evicted(frame)) => {
                let _ = c_tx.send(Message::Close(frame.clone())).await;
                let _ = u_tx.send(Message::Close(frame)).await;
            }
            // Whoever sent what was refused is told why; the other side that its peer
            // is gone (to the client, a failed upstream).
            (true, End::Refused(reason)) => {
                let _ = c_tx.send(Message::Close(close_frame(reason))).await;
                let _ = u_tx
                    .send(Message::Close(close_frame(disconnect::CLIENT_GONE)))
                    .await;
            }
            (false, End::Refused(reason)) => {
                let _ = c_tx
                    .send(Message::Close(close_frame(disconnect::UPSTREAM_FAILED)))
                    .await;
                let _ = u_tx.send(Message::Close(close_frame(reason))).await;
            }
            (true, End::ReadFailed | End::WriteFailed) => {
                // The client went away, or the upstream could not take a frame.
                let _ = c_tx
                    .send(Message::Close(close_frame(disconnect::UPSTREAM_FAILED)))
                    .await;
                let _ = u_tx
                    .send(Message::Close(close_frame(disconnect::CLIENT_GONE)))
                    .await;
            }
            (false, End::ReadFailed) => {
                // The upstream's socket failed: only the client is left to tell.
                let _ = c_tx
                    .send(Message::Close(close_frame(disconnect::UPSTREAM_FAILED)))
                    .await;
            }
            (true, End::WriteTimedOut) => {
                // The upstream stopped reading: the client is told it failed.
                let _ = c_tx
                    .send(Message::Close(close_frame(disconnect::UPSTREAM_FAILED)))
                    .await;
                let _ = u_tx
                    .send(Message::Close(close_frame(disconnect::CLIENT_GONE)))
                    .await;
            }
            (false, End::WriteTimedOut) => {
                // The client stopped reading: the upstream first (the client's full socket
                // may take nothing more, the close frame included, within the second).
                let _ = u_tx
                    .send(Message::Close(close_frame(disconnect::CLIENT_GONE)))
                    .await;
                let _ = c_tx
                    .send(Message::Close(close_frame(disconnect::WRITE_TIMEOUT)))
                    .await;
            }
            (false, End::WriteFailed) => {
                // The client could not be written: it is gone (a reset, a closed socket),
                // and the upstream is told so as when the client's read fails first.
                // Untold, the upstream waited a second (`hear_end`) to see its socket
                // end without a close frame. Nothing more goes to the client.
                let _ = u_tx
                    .send(Message::Close(close_frame(disconnect::CLIENT_GONE)))
                    .await;
            }
            (_, End::Idle) => {
                let frame = close_frame(disconnect::IDLE_TIMEOUT);
                let _ = c_tx.send(Message::Close(frame.clone())).await;
                let _ = u_tx.send(Message::Close(frame)).await;
            }
        }
    })
    .await;
    gauge.dec();
    node.metrics
        .closed
        .with_label_values(&[disconnect::FORWARD_ENDED])
        .inc();
    drop(slots); // unregistered; no longer counts against its IP, user and route
    let until = tokio::time::Instant::now() + closing::CLOSE_HANDSHAKE_WAIT;
    let client = async move {
        if !client_ended {
            // The gateway closed the client, which may still be sending (see `closing`).
            if !closing::hear_close(&mut c_rx, until).await {
                if let Ok(mut client) = c_rx.reunite(c_tx) {
                    closing::discard(client.get_mut().get_mut(), until).await;
                }
            }
        }
    };
    let upstream = async {
        if !upstream_ended {
            // The gateway is the upstream's client: it leaves closing the socket to the
            // server (RFC 6455, 7.1.1), which then holds the TIME_WAIT, not the gateway.
            closing::hear_end(&mut u_rx, until).await;
        }
    };
    tokio::join!(client, upstream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMode, Config, RouteConfig};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// The client's socket as the gateway sees it. `Gone`: reset while the upstream
    /// streamed to it, so there is nothing from it to read yet and every write fails (the
    /// down relay's write meets the failure before the up relay's read does). `Stalled`:
    /// it takes nothing and sends nothing (it stopped reading, its receive window full).
    enum Peer {
        Gone,
        Stalled,
    }

    impl tokio::io::AsyncRead for Peer {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl tokio::io::AsyncWrite for Peer {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            match *self {
                Peer::Gone => Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into())),
                Peer::Stalled => Poll::Pending,
            }
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            match *self {
                Peer::Gone => Poll::Ready(Ok(())),
                Peer::Stalled => Poll::Pending,
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Pipes `client` (raw, the gateway's side of it) to a real upstream on loopback
    /// through a route, with `heartbeat` as the node's heartbeat period; returns the
    /// upstream's side.
    async fn piped<C>(client: C, heartbeat: Duration) -> WebSocketStream<tokio::net::TcpStream>
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut config = Config::default();
        config.auth.mode = AuthMode::Insecure;
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.heartbeat.interval = heartbeat;
        let node = Node::new(config, Default::default()).expect("node");
        let cfg = RouteConfig {
            name: "r".into(),
            path_prefix: "/r".into(),
            upstream: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let route = super::super::Router::new(&[cfg])
            .expect("router")
            .find("/r")
            .expect("route");
        let ip = "127.0.0.1".parse().expect("ip");
        let slots = Slots {
            ip: node.take_ip_slot(ip).expect("ip slot"),
            user: node.take_user_slot("u").expect("user slot"),
            registered: None,
        };
        let route_slot = route.reserve().expect("route slot");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (dialled, server) = tokio::join!(
            tokio_tungstenite::connect_async(format!("ws://{addr}/")),
            async {
                let (tcp, _) = listener.accept().await.expect("accept");
                tokio_tungstenite::accept_async(tcp)
                    .await
                    .expect("handshake")
            }
        );
        let (upstream, _) = dialled.expect("dial");
        let client =
            WebSocketStream::from_raw_socket(Metered::new(client, 0.0, 0, &[]), Role::Server, None)
                .await;
        let identity = Identity {
            user: "u".into(),
            ..Default::default()
        };
        tokio::spawn(async move {
            pipe(
                node,
                route,
                client,
                upstream,
                &identity,
                (slots, route_slot),
            )
            .await
        });
        server
    }

    /// What the upstream hears next, within `within`: the close frame's code and reason.
    async fn close_heard(
        server: &mut WebSocketStream<tokio::net::TcpStream>,
        within: Duration,
    ) -> (u16, String) {
        let heard = tokio::time::timeout(within, server.next())
            .await
            .expect("the upstream hears of it in time");
        match heard {
            Some(Ok(Message::Close(Some(frame)))) => {
                (u16::from(frame.code), frame.reason.to_string())
            }
            other => panic!("the upstream got {other:?}, not a close frame"),
        }
    }

    #[tokio::test]
    async fn a_client_that_cannot_be_written_is_gone_for_the_upstream() {
        let mut server = piped(Peer::Gone, Duration::from_secs(25)).await;
        server
            .send(Message::text("to a client that is gone"))
            .await
            .expect("send");
        // Without the close, the gateway drops the socket after `CLOSE_HANDSHAKE_WAIT`
        // and the upstream reads the end of the stream or a reset, not a close frame.
        let heard = close_heard(&mut server, Duration::from_secs(5)).await;
        assert_eq!(heard, (1001, "client gone".to_string()));
    }

    /// A client that stopped reading held the pipe, its slots and the upstream for good
    /// (the idle timeout counts reads, and such a client may keep sending pings).
    #[tokio::test]
    async fn a_client_that_stops_reading_is_gone_after_two_heartbeats() {
        let mut server = piped(Peer::Stalled, Duration::from_millis(200)).await;
        server
            .send(Message::text("to a client that reads nothing"))
            .await
            .expect("send");
        let heard = close_heard(&mut server, Duration::from_secs(10)).await;
        assert_eq!(heard, (1001, "client gone".to_string()));
    }
}
