//! The WebSocket upgrade checks shared by the chat endpoint (`server`) and forwarding
//! routes (`forward`): headers, drain, origin, authentication, admission, per-IP limit,
//! and the responses that refuse or complete an upgrade.

use crate::auth::{self, AuthError, Identity, Presented};
use crate::node::{Node, Slots};
use crate::rejection::Rejection;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::Instrument;

/// Body of every plain HTTP response the gateway writes.
pub(crate) type Body = Full<Bytes>;

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Refuses an upgrade: the status of `why`, `detail` as the body, counted under its
/// reason. A 401 says `WWW-Authenticate: Bearer`; a 503 carries a jittered `Retry-After`
/// (1 to 3 s) so refused clients do not return in step.
pub(crate) fn reject(node: &Node, why: Rejection, detail: impl Into<String>) -> Response<Body> {
    node.metrics
        .rejected
        .with_label_values(&[why.reason()])
        .inc();
    let mut r = text(why.status(), detail.into() + "\n");
    match why.status() {
        StatusCode::UNAUTHORIZED => {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            let secs = 1 + rand::random::<u8>() % 3;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(u16::from(secs)));
        }
        _ => {}
    }
    r
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

/// An upgrade request that passed every check (headers, drain, origin, authentication,
/// admission, per-IP and per-user limits).
pub(crate) struct Admitted {
    /// Who connects and what their token grants.
    pub identity: Identity,
    /// `Sec-WebSocket-Key`, for the accept header.
    pub key: HeaderValue,
    /// Subprotocols the client offered.
    pub offered: Vec<String>,
    /// The client IP's and the user's connection slots, held for the connection's life.
    pub slots: Slots,
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
            Rejection::BadUpgrade,
            "expected a WebSocket upgrade",
        ));
    };
    if !is_ws || header_str(req, header::SEC_WEBSOCKET_VERSION) != Some("13") {
        return Err(reject(
            node,
            Rejection::BadUpgrade,
            "expected a WebSocket upgrade (version 13)",
        ));
    }
    // RFC 6455 upgrades HTTP/1.1; hyper upgrades nothing older, so a 101 to HTTP/1.0
    // would be followed by the connection closing.
    if req.version() != http::Version::HTTP_11 {
        return Err(reject(
            node,
            Rejection::BadUpgrade,
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !node.accepting() {
        return Err(reject(
            node,
            Rejection::ShuttingDown,
            "server draining; connect to another instance",
        ));
    }
    if !origin_allowed(
        &node.config.server.allowed_origins,
        header_str(req, header::ORIGIN),
    ) {
        return Err(reject(node, Rejection::Origin, "origin not allowed"));
    }

    let offered: Vec<String> = header_str(req, header::SEC_WEBSOCKET_PROTOCOL)
        .map(|h| {
            auth::parse_subprotocols(h)
                .into_iter()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    // A flood from one address is refused before it costs a signature check.
    if !node.admit_ip(peer.ip()) {
        return Err(reject(
            node,
            Rejection::PerIpRate,
            "too many connection attempts from this address; slow down",
        ));
    }
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
    let identity = match node.auth.authenticate(&presented) {
        Ok(identity) => identity,
        Err(e) => {
            let why = match e {
                AuthError::Missing | AuthError::MissingUser => Rejection::AuthMissing,
                _ => Rejection::AuthInvalid,
            };
            span.record("outcome", why.reason());
            return Err(reject(node, why, e.to_string()));
        }
    };
    drop(_entered);
    // One credential reconnecting in a loop is refused before it uses up the shared rate.
    if !node.admit_user(&identity.user) {
        return Err(reject(
            node,
            Rejection::PerUserRate,
            "too many connection attempts for this user; slow down",
        ));
    }
    // Reconnect storms: admit at most admission.rate upgrades per second (cluster-wide
    // with Redis); the rest come back after a jittered Retry-After.
    if !node.admit().instrument(span.clone()).await {
        return Err(reject(
            node,
            Rejection::Admission,
            "too many connections right now; retry shortly",
        ));
    }
    let Some(ip) = node.take_ip_slot(peer.ip()) else {
        return Err(reject(
            node,
            Rejection::PerIp,
            "too many connections from this address",
        ));
    };
    let Some(user) = node.take_user_slot(&identity.user) else {
        return Err(reject(
            node,
            Rejection::PerUser,
            "too many connections for this user",
        ));
    };

    span.record("user", identity.user.as_str());
    span.record("outcome", "accepted");
    Ok(Admitted {
        identity,
        key,
        offered,
        slots: Slots {
            ip,
            user,
            registered: None,
        },
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
