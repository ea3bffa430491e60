//! HTTP front: routes, the WebSocket upgrade and the accept loop.

use crate::auth;
use crate::connection;
use crate::hooks::{ConnectRequest, Verdict};
use crate::httpio::{HoldHandshake, HttpIo};
use crate::inbound::Metered;
use crate::node::Node;
use crate::outbound::{Wire, WireIo};
use crate::rejection::Rejection;
use crate::upgrade::{admit_upgrade, reject, switching, text, Body};
use futures_util::future::{Either, FutureExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

/// Binds the public port with a listen queue of `backlog` connections (tokio's own `bind`
/// asks for 128, as std does): a burst of reconnects beyond the queue loses SYNs, which
/// clients resend only a second later.
///
/// `TCP_NODELAY` is set here, once: Linux copies it to every connection the listener
/// accepts, which saves a `setsockopt` per connect (a syscall is a measurable part of a
/// connect on a slow VM). Frames must not wait for Nagle behind an unacknowledged one.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's `bind`: a restarted gateway may rebind while old connections
    // of the previous process linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts connections until `node.shutdown` is cancelled.
pub async fn run(node: Arc<Node>, listener: TcpListener) {
    let shutdown = node.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Before hyper buffers a byte: a client that opens connections and never
        // finishes a request would otherwise hold up to `server.maxHeaderBytes` in each
        // until the header timeout, as many as the fd limit allows (connectionsPerIp
        // counts upgrades). Closed unanswered, as HAProxy's `tcp-request connection
        // reject` does: no request has been read to answer.
        let Some(handshake) = node.take_handshake_slot(peer.ip()) else {
            node.metrics.refused.inc();
            tracing::debug!(%peer, "closed at accept: limits.handshakesPerIp");
            drop(stream);
            continue;
        };
        let node = node.clone();
        let max_head = node.config.server.max_header_bytes;
        tokio::spawn(async move {
            let (io, hold) = HttpIo::new(stream);
            // The request's future is boxed: inline, hyper would keep it (authentication,
            // the connect hook: several KiB) in this task's state, which is moved into
            // place for every connection the gateway accepts.
            let service = service_fn(move |req| {
                let node = node.clone();
                let handled = Box::pin(route(node, req, peer, hold.clone()));
                async move { Ok::<_, std::convert::Infallible>(handled.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(max_head)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with error");
            }
            // The connection is a WebSocket now (hyper has handed its socket over) or
            // gone: either way no longer a handshake of its IP.
            drop(handshake);
        });
    }
    node.close_all(crate::disconnect::SHUTTING_DOWN);
}

async fn route(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: SocketAddr,
    hold: HoldHandshake,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(node, req, peer, hold).await,
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if node.ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, node.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        // The demo page and the browser client (embedded; see assets.rs).
        (&Method::GET | &Method::HEAD, path) if crate::assets::find(path).is_some() => {
            crate::assets::serve(path, req.headers())
        }
        (_, path) if path == "/" || crate::config::RESERVED_PATHS.contains(&path) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        // Forwarding routes: the longest prefix of the normalised path wins; no match is
        // a 404 before any upgrade.
        (&Method::GET, path) => match node.router.route(path) {
            Some(routed) => crate::forward::upgrade(node.clone(), routed, req, peer).await,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The chat endpoint `/ws`. Its 101 goes out with the welcome (`hold`: see
/// [`HttpIo`]).
async fn upgrade(
    node: Arc<Node>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    hold: HoldHandshake,
) -> Response<Body> {
    let a = match admit_upgrade(&node, &req, peer).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let offered_refs: Vec<&str> = a.offered.iter().map(String::as_str).collect();
    let chosen = auth::chosen_subprotocol(&offered_refs);
    let offers_bearer = offered_refs
        .iter()
        .any(|p| p.starts_with(auth::SUBPROTOCOL_TOKEN_PREFIX));
    if chosen.is_none() && offers_bearer {
        // A browser fails a handshake that echoes none of its offers, and a bearer token
        // is never echoed (it would land in logs): the client must offer chatgw.v1 too.
        a.span.record("outcome", Rejection::BadUpgrade.reason());
        return reject(
            &node,
            Rejection::BadUpgrade,
            format!(
                "offer the {} subprotocol (beside bearer.<jwt>)",
                crate::protocol::SUBPROTOCOL
            ),
        );
    }
    let connect = ConnectRequest {
        user: &a.identity.user,
        ip: peer.ip().to_string(),
    };
    // Under the `connect` span: the hook's call (and its traceparent) is part of it.
    let asked = node.hooks.connect(&node.metrics, &connect);
    let extras = match asked.instrument(a.span.clone()).await {
        Verdict::Allow(extras) => extras,
        Verdict::Deny(reason) => {
            a.span.record("outcome", Rejection::HookRefused.reason());
            return reject(&node, Rejection::HookRefused, reason);
        }
        Verdict::Failed(e) => {
            a.span
                .record("outcome", Rejection::HookUnavailable.reason());
            let detail = e.for_client();
            return reject(&node, Rejection::HookUnavailable, detail);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(connection_task(
        on_upgrade,
        node.clone(),
        Box::new((a.identity, a.slots, extras)),
    ));
    hold.hold();
    switching(&a.key, chosen.as_deref())
}

/// What a connection's task runs: the upgrade's completion, then the connection
/// ([`connection::serve`]) for its whole life.
///
/// Two futures one after the other ([`FutureExt::flatten`]) rather than one async block
/// awaiting both: the block kept 104 bytes of the first part's state beside the
/// connection's, which put every connection's task in the allocator's next size class
/// (1,280 bytes against 1,024; `connection::tests_footprint`). `start` is boxed for the
/// same reason, and freed once unpacked.
#[allow(clippy::async_yields_async)] // on purpose: the block yields the loop, run by flatten
pub(crate) fn connection_task(
    on_upgrade: hyper::upgrade::OnUpgrade,
    node: Arc<Node>,
    start: Box<(
        auth::Identity,
        crate::node::Slots,
        crate::hooks::ConnectAnswer,
    )>,
) -> impl std::future::Future<Output = ()> + Send {
    let upgraded = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return Either::Right(std::future::ready(()));
            }
        };
        // The socket itself rather than hyper's Upgraded: that one keeps hyper's 8 KiB
        // read buffer until the first read (after the welcome, which on Redis waits for
        // round trips: thousands of them at once in a connect burst) and puts every read
        // and write of the connection behind a boxed trait object.
        let Ok(parts) = upgraded.downcast::<TokioIo<HttpIo>>() else {
            tracing::error!("upgraded connection of an unexpected type");
            return Either::Right(std::future::ready(()));
        };
        let config = ws_config(&node);
        let read_ahead = parts.read_buf.to_vec();
        drop(parts.read_buf); // hyper's read buffer goes now
                              // The 101, held back: it goes out with the first frame.
        let (tcp, held) = parts.io.into_inner().into_parts();
        let wire = Wire::with_pending(tcp, held);
        let limits = &node.config.limits;
        let io = Metered::new(
            WireIo(wire.clone()),
            limits.frame_rate,
            limits.frame_burst,
            &read_ahead,
        );
        let ws =
            WebSocketStream::from_partially_read(io, read_ahead, Role::Server, Some(config)).await;
        let (identity, slots, extras) = *start;
        Either::Left(connection::serve(
            node,
            ws,
            Some(wire),
            identity,
            slots,
            extras,
        ))
    };
    upgraded.flatten()
}

/// Most bytes of control frames (pings, pongs, the close) waiting in tungstenite's write
/// buffer: about 60 pongs of the largest payload.
pub const CONTROL_BUFFER_BYTES: usize = 8 * 1024;

/// tungstenite's defaults (128 KiB read and write buffers) would dominate the memory of an
/// idle connection; chat frames are small. The read buffer is allocated with the
/// connection and kept for its life, and is also the most one read takes from the
/// socket: 256 bytes hold a typical command (a `send` of a 100-byte body is about 180;
/// a larger frame takes a read per 256 bytes). 512 cost every idle connection 256 bytes
/// more (bench/summary.md).
/// Text frames go to the socket through the [`Wire`], never through tungstenite's write
/// buffer, which holds only pings, pongs and the close frame until the writer's flush. Its
/// bound ([`CONTROL_BUFFER_BYTES`]) is what a client that pings but never reads can pin:
/// tungstenite queues a pong per ping there while the socket is full. At the old bound
/// (the outbound queue's bytes and a frame) that was about 1 MiB per connection; past this
/// one the writer's next ping fails and closes the connection as a slow consumer.
fn ws_config(node: &Node) -> WebSocketConfig {
    let limits = &node.config.limits;
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(CONTROL_BUFFER_BYTES / 2)
        .max_write_buffer_size(CONTROL_BUFFER_BYTES)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections the kernel completes while nobody accepts: all of them when the queue
    /// is long enough, about `backlog` otherwise (the rest lose their SYNs and hang).
    async fn completed_without_accept(backlog: u32, n: usize) -> usize {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), backlog).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connects = (0..n).map(|_| {
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        });
        let done = futures_util::future::join_all(connects).await;
        drop(listener);
        done.iter().filter(|r| matches!(r, Ok(Ok(_)))).count()
    }

    #[tokio::test]
    async fn a_burst_beyond_a_short_backlog_fits_a_long_one() {
        // 300 > 128 (the usual default) but well under the default of 4096.
        let long = completed_without_accept(config_default_backlog(), 300).await;
        assert_eq!(long, 300, "every connect of the burst completes");
        let short = completed_without_accept(16, 300).await;
        assert!(
            short < 100,
            "a 16-long queue took {short} connects: backlog not applied"
        );
    }

    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), 16).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        // The accept loop sets nothing on the accepted socket: this is all it gets.
        assert!(
            accepted.nodelay().expect("getsockopt"),
            "an accepted connection would send small frames behind Nagle's algorithm"
        );
        // And an ordinary listener's connections do not have it: the test can fail.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let _c = tokio::net::TcpStream::connect(plain.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (other, _) = plain.accept().await.expect("accept");
        assert!(!other.nodelay().expect("getsockopt"));
        drop(client);
    }

    fn config_default_backlog() -> u32 {
        crate::config::Config::default().server.listen_backlog
    }
}
