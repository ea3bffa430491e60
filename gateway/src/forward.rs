//! WebSocket forwarding routes: the gateway authenticates a client once, then pipes its
//! frames to an upstream WebSocket service (a bot, a game server, a sidecar) and back,
//! with backpressure in both directions: a slow side slows the other, and at most one
//! message per direction is in the gateway at a time.

use crate::config::{upstream_url, RouteConfig};
use crate::disconnect::{self, CloseReason};
use crate::node::{IpSlot, Node};
use crate::outbound::OutboundQueue;
use crate::upgrade::{admit_upgrade, reject, retry_later, switching, Body};
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

/// One configured route.
pub struct Route {
    /// Its configuration.
    pub cfg: RouteConfig,
    base: url::Url,
    open: AtomicU32,
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

    /// The route with the longest prefix matching `path` on a segment boundary.
    pub fn find(&self, path: &str) -> Option<Arc<Route>> {
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
            .max_write_buffer_size(max + 4096)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

type Upstream = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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
            backoff *= 2;
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
    route: Arc<Route>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let a = match admit_upgrade(&node, &req, peer).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let max = route.cfg.max_connections;
    if max > 0 && route.open.load(Ordering::Relaxed) >= max {
        return retry_later(&node, "route_limit", "route at its connection limit");
    }
    let span = tracing::info_span!(parent: &a.span, "forward", route = %route.cfg.name, upstream = tracing::field::Empty);
    let target = route.target(req.uri().path(), req.uri().query());
    span.record("upstream", tracing::field::display(&target));
    let Ok(mut up_req) = target.as_str().into_client_request() else {
        return reject(
            &node,
            StatusCode::BAD_GATEWAY,
            "upstream_url",
            "bad upstream URL".into(),
        );
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
        if let Ok(v) = HeaderValue::from_str(&a.user) {
            h.insert("x-chat-user", v);
        }
    }
    if route.cfg.forward_trace {
        let tp = crate::telemetry::traceparent(&span).or_else(|| {
            req.headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        if let Some(v) = tp.and_then(|t| HeaderValue::from_str(&t).ok()) {
            h.insert("traceparent", v);
        }
    }
    // Subprotocols go through, except the one carrying the client's token.
    let offers: Vec<&str> = a
        .offered
        .iter()
        .map(String::as_str)
        .filter(|p| !p.starts_with(crate::auth::SUBPROTOCOL_TOKEN_PREFIX))
        .collect();
    if !offers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&offers.join(", ")) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    let Some((upstream, chosen)) = dial(&node, &route, up_req).instrument(span.clone()).await
    else {
        return reject(
            &node,
            StatusCode::BAD_GATEWAY,
            "upstream_down",
            format!("upstream of route {} unavailable", route.cfg.name),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ws_config = route.ws_config();
    let task_node = node.clone();
    let task_route = route.clone();
    let slot = a.slot;
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let client = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(ws_config),
                    )
                    .await;
                    pipe(task_node, task_route, client, upstream, slot).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        }
        .instrument(span),
    );
    switching(&a.key, chosen.as_deref())
}

/// How one direction of a pipe ended.
enum End {
    /// The sender closed, with this frame (passed on to the other side).
    Closed(Option<CloseFrame>),
    /// The sender's socket failed.
    ReadFailed,
    /// The sender sent a message over the route's `maxFrameBytes`.
    TooBig,
    /// The receiving side could not be written.
    WriteFailed,
}

async fn relay<R, W>(mut from: R, to: &mut W, node: &Node, route: &str, dir: &str) -> End
where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    W: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let frames = node.metrics.forward_frames.with_label_values(&[route, dir]);
    let bytes = node.metrics.forward_bytes.with_label_values(&[route, dir]);
    while let Some(msg) = from.next().await {
        let msg = match msg {
            Ok(Message::Close(frame)) => return End::Closed(frame),
            Ok(m) => m,
            Err(tokio_tungstenite::tungstenite::Error::Capacity(_)) => return End::TooBig,
            Err(_) => return End::ReadFailed,
        };
        frames.inc();
        bytes.inc_by(msg.len() as u64);
        // Awaiting the write is the backpressure: nothing more is read meanwhile.
        if to.send(msg).await.is_err() {
            return End::WriteFailed;
        }
    }
    End::ReadFailed
}

fn close_frame(reason: CloseReason) -> Option<CloseFrame> {
    Some(CloseFrame {
        code: CloseCode::from(reason.code),
        reason: reason.reason.into(),
    })
}

async fn pipe<C>(
    node: Arc<Node>,
    route: Arc<Route>,
    client: WebSocketStream<C>,
    upstream: Upstream,
    _slot: IpSlot,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = route.cfg.name.clone();
    // Registered like a chat connection so drain and rebalance close it too (close 1012:
    // a goaway cannot be put into a stream the gateway does not speak).
    let handle = OutboundQueue::opaque();
    let id = node.register(handle.clone());
    route.open.fetch_add(1, Ordering::Relaxed);
    let gauge = node.metrics.forward_connections.with_label_values(&[&name]);
    gauge.inc();
    let (mut c_tx, c_rx) = client.split();
    let (mut u_tx, u_rx) = upstream.split();
    let outcome = tokio::select! {
        end = relay(c_rx, &mut u_tx, &node, &name, "up") => (true, end),
        end = relay(u_rx, &mut c_tx, &node, &name, "down") => (false, end),
        _ = handle.closing().cancelled() => {
            let reason = handle.close_reason().unwrap_or(disconnect::SHUTTING_DOWN);
            (false, End::Closed(close_frame(reason)))
        }
    };
    // Pass the close on, with its code, to whichever side is still there.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        match outcome {
            (true, End::Closed(frame)) => {
                let _ = u_tx.send(Message::Close(frame)).await;
            }
            (false, End::Closed(frame)) => {
                let _ = c_tx.send(Message::Close(frame.clone())).await;
                let _ = u_tx.send(Message::Close(frame)).await;
            }
            (up, End::TooBig) => {
                let frame = close_frame(disconnect::MESSAGE_TOO_BIG);
                let _ = c_tx.send(Message::Close(frame.clone())).await;
                let _ = u_tx
                    .send(Message::Close(if up {
                        close_frame(disconnect::CLIENT_GONE)
                    } else {
                        frame
                    }))
                    .await;
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
            (false, End::ReadFailed | End::WriteFailed) => {
                let _ = c_tx
                    .send(Message::Close(close_frame(disconnect::UPSTREAM_FAILED)))
                    .await;
            }
        }
    })
    .await;
    gauge.dec();
    route.open.fetch_sub(1, Ordering::Relaxed);
    node.unregister(id);
    node.metrics
        .closed
        .with_label_values(&[disconnect::FORWARD_ENDED])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, upstream: &str, strip: bool) -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            path_prefix: prefix.into(),
            upstream: upstream.into(),
            strip_prefix: strip,
            ..Default::default()
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let mut a = route("/a", "up1:1", false);
        a.name = "a".into();
        let mut ab = route("/a/b", "up2:2", false);
        ab.name = "ab".into();
        let r = Router::new(&[a, ab]).expect("router");
        assert_eq!(
            r.find("/a/b/c").map(|x| x.cfg.name.clone()),
            Some("ab".into())
        );
        assert_eq!(
            r.find("/a/b").map(|x| x.cfg.name.clone()),
            Some("ab".into())
        );
        assert_eq!(r.find("/a/x").map(|x| x.cfg.name.clone()), Some("a".into()));
        assert_eq!(
            r.find("/ab").map(|x| x.cfg.name.clone()),
            None,
            "not a segment boundary"
        );
        assert!(r.find("/other").is_none());
    }

    #[test]
    fn target_strips_prefix_and_credentials() {
        let strip = Router::new(&[route("/bots", "ws://b:9/base", true)]).expect("router");
        let r = strip.find("/bots/x").expect("route");
        assert_eq!(
            r.target("/bots/x", Some("token=t&user=u&room=7")).as_str(),
            "ws://b:9/base/x?room=7"
        );
        assert_eq!(r.target("/bots", None).as_str(), "ws://b:9/base/");
        let keep = Router::new(&[route("/bots", "b:9", false)]).expect("router");
        let r = keep.find("/bots/x").expect("route");
        assert_eq!(r.target("/bots/x", None).as_str(), "ws://b:9/bots/x");
    }
}
