//! HTTP front: routes, the WebSocket upgrade and the accept loop.

use crate::auth::{self, AuthError, Presented};
use crate::connection;
use crate::node::{IpSlot, Node};
use crate::outbound::CloseReason;
use crate::protocol::close;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

pub(crate) type Body = Full<Bytes>;

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
    node.close_all(CloseReason {
        code: close::GOING_AWAY,
        reason: "server shutting down",
    });
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
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

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn reject(
    node: &Node,
    status: StatusCode,
    reason: &'static str,
    detail: String,
) -> Response<Body> {
    node.metrics.rejected.with_label_values(&[reason]).inc();
    text(status, detail + "\n")
}

fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        None => true, // not a browser
        Some(_) if allowed.is_empty() => true,
        Some(o) => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(o)),
    }
}

/// 503 with a jittered `Retry-After` (1 to 3 s) so refused clients do not return in step.
pub(crate) fn retry_later(node: &Node, reason: &'static str, detail: &str) -> Response<Body> {
    let mut r = reject(
        node,
        StatusCode::SERVICE_UNAVAILABLE,
        reason,
        detail.to_string(),
    );
    let secs = 1 + rand::random::<u8>() % 3;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(u16::from(secs)));
    r
}

/// An upgrade request that passed every check (headers, drain, origin, authentication,
/// admission, per-IP limit).
pub(crate) struct Admitted {
    /// Authenticated user id.
    pub user: String,
    /// `Sec-WebSocket-Key`, for the accept header.
    pub key: HeaderValue,
    /// Subprotocols the client offered.
    pub offered: Vec<String>,
    /// The client IP's connection slot, held for the connection's life.
    pub slot: IpSlot,
    /// The `connect` span.
    pub span: tracing::Span,
}

/// Checks an upgrade request; the error is the response that refuses it.
pub(crate) async fn admit_upgrade(
    node: &Arc<Node>,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Admitted, Response<Body>> {
    let is_ws = header_str(req, header::UPGRADE)
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && header_str(req, header::CONNECTION).is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(reject(
            node,
            StatusCode::BAD_REQUEST,
            "bad_upgrade",
            "expected a WebSocket upgrade".into(),
        ));
    };
    if !is_ws || header_str(req, header::SEC_WEBSOCKET_VERSION) != Some("13") {
        return Err(reject(
            node,
            StatusCode::BAD_REQUEST,
            "bad_upgrade",
            "expected a WebSocket upgrade (version 13)".into(),
        ));
    }
    if !node.accepting() {
        return Err(retry_later(
            node,
            "shutting_down",
            "server draining; connect to another instance",
        ));
    }
    if !origin_allowed(
        &node.config.server.allowed_origins,
        header_str(req, header::ORIGIN),
    ) {
        return Err(reject(
            node,
            StatusCode::FORBIDDEN,
            "origin",
            "origin not allowed".into(),
        ));
    }

    let offered: Vec<String> = header_str(req, header::SEC_WEBSOCKET_PROTOCOL)
        .map(|h| {
            auth::parse_subprotocols(h)
                .into_iter()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut presented = Presented {
        bearer: header_str(req, header::AUTHORIZATION)
            .and_then(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string()),
        subprotocol: offered
            .iter()
            .find_map(|p| p.strip_prefix(auth::SUBPROTOCOL_TOKEN_PREFIX))
            .map(str::to_string),
        ..Default::default()
    };
    if let Some(query) = req.uri().query() {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "token" => presented.query_token = Some(v.into_owned()),
                "user" => presented.query_user = Some(v.into_owned()),
                _ => {}
            }
        }
    }
    let span = if crate::telemetry::enabled() {
        let span = tracing::info_span!("connect", peer = %peer, user = tracing::field::Empty, outcome = tracing::field::Empty, trace_id = tracing::field::Empty);
        crate::telemetry::record_trace_id(&span);
        span
    } else {
        tracing::Span::none()
    };
    let _entered = span.enter();
    let user = match node.auth.authenticate(&presented) {
        Ok(user) => user,
        Err(e) => {
            let reason = match e {
                AuthError::Missing | AuthError::MissingUser => "auth_missing",
                _ => "auth_invalid",
            };
            span.record("outcome", reason);
            let mut r = reject(node, StatusCode::UNAUTHORIZED, reason, e.to_string());
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(r);
        }
    };
    // Reconnect storms: admit at most admission.rate upgrades per second (cluster-wide
    // with Redis); the rest come back after a jittered Retry-After.
    drop(_entered);
    if !node.admit().instrument(span.clone()).await {
        return Err(retry_later(
            node,
            "admission",
            "too many connections right now; retry shortly",
        ));
    }
    let Some(slot) = node.take_ip_slot(peer.ip()) else {
        return Err(reject(
            node,
            StatusCode::TOO_MANY_REQUESTS,
            "per_ip",
            "too many connections from this address".into(),
        ));
    };

    span.record("user", user.as_str());
    span.record("outcome", "accepted");
    Ok(Admitted {
        user,
        key,
        offered,
        slot,
        span,
    })
}

/// The 101 response completing a WebSocket handshake.
pub(crate) fn switching(key: &HeaderValue, protocol: Option<&str>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    r
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_allow_list() {
        assert!(origin_allowed(&[], Some("https://evil.example")));
        let list = vec!["https://app.example".to_string()];
        assert!(origin_allowed(&list, Some("https://app.example")));
        assert!(!origin_allowed(&list, Some("https://evil.example")));
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&["*".to_string()], Some("https://x")));
    }
}
