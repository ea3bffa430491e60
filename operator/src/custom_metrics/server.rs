//! The HTTPS listener: TLS handshake, then per request front-proxy authentication (401),
//! SubjectAccessReview (403), and the API's answer from the latest scrape.

use super::api::{self, Reply};
use super::authn::FrontProxyConfig;
use super::authz::{self, Authorizer, Decision};
use super::scrape::Values;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, Response, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::ServerConfig;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// A handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time to send a request's head, as on the gateway's own ports: without it (hyper has no
/// timer unless given one) any pod that reaches the port, no certificate needed, could
/// hold a connection for ever with an unfinished head. hyper also starts it while a
/// kept-alive connection waits for its next request, so it is the idle bound too: the
/// aggregator's idle connections are closed after 10 s and it opens new ones, as it does
/// after any close.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of a request's head (hyper's read buffer; over it: 431). The aggregator
/// sends the user's own small headers plus `X-Remote-User`, one `X-Remote-Group` per
/// group and `X-Remote-Extra-*`: the HPA's is well under 1 KiB, and 64 KiB holds a user in
/// 500 groups of 100-character names, more than identity providers put in a token (Entra
/// ID stops at 200, then sends an overage claim). hyper's default is ~408 KiB.
pub const MAX_REQUEST_HEAD: usize = 64 << 10;

/// Connections served at once; the next waits (unaccepted, in the listen queue) until
/// one ends. Legitimate load is the aggregators': a few connections per kube-apiserver
/// replica, HPA syncs run five at a time by default. A stranger's connection holds at
/// most about 200 KiB (the head above, rustls' handshake, record and plaintext buffers, a
/// 401), so 256 of them stay under 50 MiB of the operator's 256 MiB, which also runs the
/// reconciler.
pub const MAX_CONNECTIONS: usize = 256;

/// Connections one address may hold of [`MAX_CONNECTIONS`]; past it a new one is closed
/// at once. Without it, one pod opening connections faster than the handshake timeout
/// ends them would hold every slot, and the aggregator's requests would wait behind it
/// (every HPA without its metric). A kube-apiserver opens a few, one per concurrent
/// request it proxies (HPA syncs run five at a time by default).
pub const MAX_CONNECTIONS_PER_IP: usize = 64;

/// How often, at most, waiting at [`MAX_CONNECTIONS`] is logged.
const AT_BOUND_LOG_EVERY: Duration = Duration::from_secs(60);

/// The listener's bounds; [`Limits::default`] is what the operator serves with (tests
/// shorten them).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// See [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`MAX_REQUEST_HEAD`]; at least 8192 (hyper's floor).
    pub max_request_head: usize,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`MAX_CONNECTIONS_PER_IP`].
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_request_head: MAX_REQUEST_HEAD,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
        }
    }
}

/// What a request needs.
pub struct State {
    /// Who the front proxy is.
    pub front_proxy: FrontProxyConfig,
    /// Who may read what.
    pub authorizer: Authorizer,
    /// The latest scrape.
    pub values: Values,
    /// Requests answered, by HTTP status.
    pub requests: prometheus::IntCounterVec,
}

/// Serves HTTPS on `listener` until dropped.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, state: Arc<State>) {
    serve_with(listener, tls, state, Limits::default()).await
}

/// [`serve`] within `limits`.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<State>,
    limits: Limits,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Taken before accepting, so that a connection costs nothing (beyond the kernel's
    // listen queue) until it has a slot, and held until the connection ends.
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_ip = PerIp::default();
    let mut logged_at_bound: Option<Instant> = None;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if logged_at_bound.is_none_or(|t| t.elapsed() >= AT_BOUND_LOG_EVERY) {
                    logged_at_bound = Some(Instant::now());
                    tracing::warn!(
                        max = limits.max_connections,
                        "custom metrics connections at their bound: new ones wait until one ends"
                    );
                }
                match slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return, // closed: never, the semaphore is ours
                }
            }
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accepting a custom metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(of_ip) = per_ip.take(peer.ip(), limits.max_connections_per_ip) else {
            tracing::debug!(%peer, "closed at accept: too many connections from its address");
            continue; // the stream and the slot are dropped
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _held = (slot, of_ip);
            let handshake = acceptor.accept(stream);
            let tls = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let chain: Arc<Vec<CertificateDer<'static>>> = Arc::new(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                    .unwrap_or_default(),
            );
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (state, chain) = (state.clone(), chain.clone());
                async move {
                    let reply =
                        answer(req.method(), req.uri(), req.headers(), &chain, &state).await;
                    Ok::<_, Infallible>(response(reply))
                }
            });
            // Request bodies are never read (every request is a GET), and an
            // unauthenticated client only ever gets a short 401, so the head is all a
            // stranger can make the server hold.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_request_head)
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "custom metrics connection ended");
            }
        });
    }
}

/// Open connections per client address (at most [`MAX_CONNECTIONS`] entries: each has
/// one at least).
#[derive(Clone, Default)]
struct PerIp(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection of an address, counted until dropped.
struct OfIp {
    per_ip: PerIp,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<OfIp> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(OfIp {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for OfIp {
    fn drop(&mut self) {
        let mut counts = self.per_ip.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The answer to one request from a client that presented `chain`: 401 unless the
/// front proxy vouches for a user, 403 unless that user may, then the API's answer.
pub async fn answer(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    chain: &[CertificateDer<'_>],
    state: &State,
) -> Reply {
    let reply = async {
        let user = match state
            .front_proxy
            .get()
            .and_then(|proxy| proxy.authenticate(chain, headers, UnixTime::now()))
        {
            Ok(user) => user,
            Err(e) => {
                tracing::debug!(path = uri.path(), reason = %e, "unauthenticated custom metrics request");
                return api::status(401, "Unauthorized", format!("Unauthorized: {e}"));
            }
        };
        let attributes = authz::attributes(method, uri.path());
        match state.authorizer.authorize(&user, &attributes).await {
            Ok(Decision::Allow) => {}
            Ok(Decision::Deny(reason)) => {
                let mut message = format!("User {:?} cannot {}", user.name, attributes.describe());
                if !reason.is_empty() {
                    message.push_str(&format!(": {reason}"));
                }
                return api::status(403, "Forbidden", message);
            }
            Err(e) => {
                tracing::warn!(error = %e, "SubjectAccessReview failed");
                return api::status(500, "InternalError", format!("authorization check failed: {e}"));
            }
        }
        if method != Method::GET {
            return api::status(405, "MethodNotAllowed", format!("{method} is not supported"));
        }
        api::respond(uri.path(), uri.query(), &state.values.current())
    }
    .await;
    state
        .requests
        .with_label_values(&[&reply.status.to_string()])
        .inc();
    reply
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&reply.body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
