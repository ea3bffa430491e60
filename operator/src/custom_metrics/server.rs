//! The HTTPS listener: TLS handshake, then per request front-proxy authentication (401),
//! SubjectAccessReview (403), and the API's answer from the latest scrape.

use super::api::{self, Reply};
use super::authn::FrontProxyConfig;
use super::authz::{self, Authorizer, Decision};
use super::scrape::Values;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::ServerConfig;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accepting a custom metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "custom metrics connection ended");
            }
        });
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
