//! HTTP front: routes, the WebSocket upgrade and the accept loop.

use crate::auth;
use crate::connection;
use crate::node::Node;
use crate::upgrade::{admit_upgrade, switching, text, Body};
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
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, std::convert::Infallible>(route(node, req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with error");
            }
        });
    }
    node.close_all(crate::disconnect::SHUTTING_DOWN);
}

async fn route(node: Arc<Node>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(node, req, peer).await,
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
        // Forwarding routes: longest prefix wins; no match is a 404 before any upgrade.
        (&Method::GET, path) => match node.router.find(path) {
            Some(route) => crate::forward::upgrade(node.clone(), route, req, peer).await,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The chat endpoint `/ws`.
async fn upgrade(node: Arc<Node>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let a = match admit_upgrade(&node, &req, peer).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let offered_refs: Vec<&str> = a.offered.iter().map(String::as_str).collect();
    let chosen = auth::chosen_subprotocol(&offered_refs);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ws_config = ws_config(&node);
    let task_node = node.clone();
    let (user, slot) = (a.user, a.slot);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                connection::serve(task_node, ws, user, slot).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    switching(&a.key, chosen.as_deref())
}

/// tungstenite's defaults (128 KiB read and write buffers) would dominate the memory of an
/// idle connection; chat frames are small. Writes collect up to 16 KiB and go out in one
/// syscall per batch (the writer flushes after each batch) instead of one per frame.
fn ws_config(node: &Node) -> WebSocketConfig {
    let limits = &node.config.limits;
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(limits.outbound_queue_bytes + limits.max_frame_bytes + 4096)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
}
