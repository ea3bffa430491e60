//! WebSocket forwarding routes: the gateway authenticates a client once, then pipes its
//! frames to an upstream WebSocket service (a bot, a game server, a sidecar) and back,
//! with backpressure in both directions: a slow side slows the other, and at most one
//! message per direction is in the gateway at a time.
//!
//! What the client controls stays in its lane: the path is normalised and refused (400)
//! if it would leave the route's prefix (dot segments, also percent-encoded; encoded
//! slashes), the user id is percent-encoded into `X-Chat-User`, a `traceparent` is passed
//! on only when it is one. A connection idle in both directions for the route's
//! `idleTimeout` is closed, and `maxConnections` counts dials in progress.

mod pipe;

use crate::config::{upstream_url, RouteConfig};
use crate::inbound::Metered;
use crate::node::Node;
use crate::rejection::Rejection;
use crate::upgrade::{admit_upgrade, reject, switching, Body};
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use pipe::pipe;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

/// One configured route.
pub struct Route {
    /// Its configuration.
    pub cfg: RouteConfig,
    base: url::Url,
    open: AtomicU32,
}

/// One of a route's `maxConnections`, taken before the dial and held for the life of the
/// connection.
struct RouteSlot(Arc<Route>);

impl Drop for RouteSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request path matched to its route ([`Router::route`]).
pub struct Routed {
    /// The route with the longest prefix of the normalised path; for a refused path,
    /// the route of the raw path (the one it left).
    route: Arc<Route>,
    /// The normalised path, or None when the path leaves the route (refused, 400).
    path: Option<String>,
}

/// Routes, longest prefix first.
#[derive(Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// Builds the router (the config was validated, so every upstream parses).
    pub fn new(cfgs: &[RouteConfig]) -> Result<Router, String> {
        let mut routes = cfgs
            .iter()
            .map(|cfg| {
                Ok(Arc::new(Route {
                    base: upstream_url(&cfg.upstream)?,
                    cfg: cfg.clone(),
                    open: AtomicU32::new(0),
                }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        routes.sort_by_key(|r| std::cmp::Reverse(r.cfg.path_prefix.trim_end_matches('/').len()));
        Ok(Router { routes })
    }

    /// The route for a request's raw path, or None (404) when no prefix matches it.
    ///
    /// The route is chosen on the path the upstream will see, the normalised one: chosen
    /// on the raw path, `/a/x/../b/y` and `/a//b/y` went to the route of `/a` and were
    /// forwarded there as `/a/b/y`, although the route of `/a/b` has the longer prefix.
    /// The raw path still decides whether there is a route at all and which one a path
    /// that cannot be normalised, or climbs out of its prefix, is refused for (400).
    pub fn route(&self, raw: &str) -> Option<Routed> {
        let named = self.find(raw)?;
        let Some(path) = named.normalize(raw) else {
            return Some(Routed {
                route: named,
                path: None,
            });
        };
        // The normalised path is inside `named`'s prefix, so this finds `named` or a
        // route with a longer prefix: never none.
        let route = self.find(&path).unwrap_or(named);
        Some(Routed {
            route,
            path: Some(path),
        })
    }

    /// The route with the longest prefix matching `path` on a segment boundary (the
    /// raw path: see [`Router::route`]).
    fn find(&self, path: &str) -> Option<Arc<Route>> {
        self.routes
            .iter()
            .find(|r| {
                let p = r.cfg.path_prefix.trim_end_matches('/');
                path == p
                    || path
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .cloned()
    }
}

impl Route {
    /// Takes a connection slot, or None at `maxConnections` (dials in progress count).
    fn reserve(self: &Arc<Self>) -> Option<RouteSlot> {
        let max = self.cfg.max_connections;
        let mut cur = self.open.load(Ordering::Relaxed);
        loop {
            if max > 0 && cur >= max {
                return None;
            }
            match self
                .open
                .compare_exchange(cur, cur + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(RouteSlot(self.clone())),
                Err(now) => cur = now,
            }
        }
    }

    /// The request path with its dot segments resolved (`%2e` is a dot too), or None when
    /// it cannot be forwarded as it is meant: a backslash or an encoded slash or
    /// backslash (read differently by different servers), or a path that climbs out of
    /// the route's prefix.
    fn normalize(&self, path: &str) -> Option<String> {
        let lower = path.to_ascii_lowercase();
        if path.contains('\\') || lower.contains("%2f") || lower.contains("%5c") {
            return None;
        }
        let mut kept: Vec<&str> = Vec::new();
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            match seg.to_ascii_lowercase().replace("%2e", ".").as_str() {
                "." => {}
                ".." => {
                    kept.pop()?;
                }
                _ if seg.is_empty() && i != last => {} // `//`
                _ => kept.push(seg),
            }
        }
        let normal = format!("/{}", kept.join("/"));
        let prefix = self.cfg.path_prefix.trim_end_matches('/');
        let inside = normal == prefix
            || normal
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'));
        inside.then_some(normal)
    }

    /// The upstream URL for a client request path and query.
    fn target(&self, path: &str, query: Option<&str>) -> url::Url {
        let prefix = self.cfg.path_prefix.trim_end_matches('/');
        let rest = if self.cfg.strip_prefix {
            &path[prefix.len().min(path.len())..]
        } else {
            path
        };
        let mut url = self.base.clone();
        let base = self.base.path().trim_end_matches('/');
        let joined = format!("{base}{}", if rest.is_empty() { "/" } else { rest });
        url.set_path(&joined);
        if !url.path().starts_with(base) {
            // Cannot happen after `normalize`; never forward outside the base anyway.
            url.set_path(if base.is_empty() { "/" } else { base });
        }
        // The credentials stay at the gateway.
        let kept: Vec<(String, String)> = query
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .filter(|(k, _)| k != "token" && k != "user")
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        url
    }

    fn ws_config(&self) -> WebSocketConfig {
        let max = self.cfg.max_frame_bytes;
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(max.saturating_add(4096))
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

type Upstream = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The longest wait between two dials: `retryBackoff` doubles up to this.
const MAX_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Dials the upstream with retries; returns the socket and the subprotocol it chose.
async fn dial(
    node: &Node,
    route: &Route,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Option<(Upstream, Option<String>)> {
    let mut backoff = route.cfg.retry_backoff;
    for attempt in 0..=route.cfg.retries {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(MAX_RETRY_WAIT);
        }
        let fut = tokio_tungstenite::connect_async_with_config(
            req.clone(),
            Some(route.ws_config()),
            true,
        );
        match tokio::time::timeout(route.cfg.connect_timeout, fut).await {
            Ok(Ok((ws, resp))) => {
                let chosen = resp
                    .headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                return Some((ws, chosen));
            }
            Ok(Err(e)) => {
                tracing::debug!(route = %route.cfg.name, attempt, error = %e, "upstream dial failed")
            }
            Err(_) => tracing::debug!(route = %route.cfg.name, attempt, "upstream dial timed out"),
        }
        node.metrics
            .forward_dial_errors
            .with_label_values(&[&route.cfg.name])
            .inc();
    }
    None
}

/// Handles an upgrade on a forwarding route: checks, dials upstream (502 if it cannot),
/// answers 101 and pipes.
pub async fn upgrade(
    node: Arc<Node>,
    routed: Routed,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let Routed { route, path } = routed;
    let Some(path) = path else {
        return reject(
            &node,
            Rejection::BadPath,
            format!("path leaves route {}", route.cfg.name),
        );
    };
    let a = match admit_upgrade(&node, &req, peer).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    // Subprotocols go to the upstream, except the one carrying the client's token. A
    // client that offered only that one would get a 101 naming none of its offers, which
    // a browser fails: refused before anything is dialled, as on the chat endpoint.
    let offers: Vec<&str> = a
        .offered
        .iter()
        .map(String::as_str)
        .filter(|p| !p.starts_with(crate::auth::SUBPROTOCOL_TOKEN_PREFIX))
        .collect();
    if offers.is_empty() && !a.offered.is_empty() {
        return reject(
            &node,
            Rejection::BadUpgrade,
            "offer the upstream's subprotocol beside bearer.<jwt>",
        );
    }
    let Some(route_slot) = route.reserve() else {
        return reject(
            &node,
            Rejection::RouteLimit,
            "route at its connection limit",
        );
    };
    let span = tracing::info_span!(parent: &a.span, "forward", route = %route.cfg.name, upstream = tracing::field::Empty);
    let target = route.target(&path, req.uri().query());
    span.record("upstream", tracing::field::display(&target));
    let Ok(mut up_req) = target.as_str().into_client_request() else {
        return reject(&node, Rejection::UpstreamUrl, "bad upstream URL");
    };
    let h = up_req.headers_mut();
    for (k, v) in &route.cfg.headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::try_from(k.as_str()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    if route.cfg.forward_user {
        h.insert("x-chat-user", user_header(&a.identity.user));
    }
    if route.cfg.forward_trace {
        let tp = crate::telemetry::traceparent(&span).or_else(|| {
            req.headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .filter(|t| crate::protocol::valid_traceparent(t))
                .map(str::to_string)
        });
        if let Some(v) = tp.and_then(|t| HeaderValue::from_str(&t).ok()) {
            h.insert("traceparent", v);
        }
    }
    if !offers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&offers.join(", ")) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    let Some((upstream, chosen)) = dial(&node, &route, up_req).instrument(span.clone()).await
    else {
        return reject(
            &node,
            Rejection::UpstreamDown,
            format!("upstream of route {} unavailable", route.cfg.name),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ws_config = route.ws_config();
    let task_node = node.clone();
    let task_route = route.clone();
    let slots = a.slots;
    let identity = a.identity;
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    // Metered as the chat endpoint is: pings and fragments cost the
                    // gateway CPU the upstream never sees.
                    let limits = &task_node.config.limits;
                    let io = Metered::new(
                        TokioIo::new(upgraded),
                        limits.frame_rate,
                        limits.frame_burst,
                        &[],
                    );
                    let client =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
                    pipe(
                        task_node,
                        task_route,
                        client,
                        upstream,
                        &identity,
                        (slots, route_slot),
                    )
                    .await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        }
        .instrument(span),
    );
    switching(&a.key, chosen.as_deref())
}

/// The user id as a header value: bytes that are not visible ASCII, and `%` itself,
/// percent-encoded (UTF-8), so every id gets through and decodes back to itself.
fn user_header(user: &str) -> HeaderValue {
    const ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'%');
    let out = utf8_percent_encode(user, ESCAPED).to_string();
    // Only visible ASCII is left: always a valid header value.
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("%3F"))
}

#[cfg(test)]
mod tests;
