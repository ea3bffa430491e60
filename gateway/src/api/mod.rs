//! The server API for the application's backend: JSON over HTTP on its own port (never the
//! public one), every request authenticated with an API key (`Authorization: Bearer
//! <key>` or `X-Api-Key`). docs/backend.md; the schema is docs/openapi.json, served at
//! `GET /api/v1/openapi.json`.

mod handlers;
pub mod keys;

use crate::node::Node;
use crate::upgrade::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keys::ApiKeys;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The OpenAPI document of this API (checked in; a test keeps it in step with the routes).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Every route: method, path, and its name in metrics.
pub const ROUTES: [(&str, &str, &str); 9] = [
    ("POST", "/api/v1/publish", "publish"),
    ("POST", "/api/v1/broadcast", "broadcast"),
    ("POST", "/api/v1/disconnect", "disconnect"),
    ("POST", "/api/v1/unsubscribe", "unsubscribe"),
    ("GET", "/api/v1/presence", "presence"),
    ("GET", "/api/v1/rooms", "rooms"),
    ("GET", "/api/v1/nodes", "nodes"),
    ("GET", "/api/v1/history", "history"),
    ("GET", "/api/v1/openapi.json", "openapi"),
];

/// An API error: status and a JSON body `{"error": code, "message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError::*;
        match e {
            Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            // The publish may be stored: a retry with the same msg_id is safe.
            UnknownOutcome(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unknown_outcome", m)
            }
            Internal(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
            Quota(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", m),
        }
    }
}

/// A JSON response.
fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(crate::protocol::to_json(value))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    #[derive(Serialize)]
    struct Error<'a> {
        error: &'a str,
        message: &'a str,
    }
    let mut r = json(
        e.status,
        &Error {
            error: e.code,
            message: &e.message,
        },
    );
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Connections the API serves at once. A backend needs a pool of a few per pod; past the
/// bound, connections wait in the listen backlog until one ends (idle ones end after the
/// 10 s header timeout), so a client opening connections in a loop cannot take the file
/// descriptors the gateway's WebSockets need (its process has one limit for both).
pub const MAX_CONNECTIONS: usize = 1024;

/// Serves the API until shutdown; the keys file is re-read every `reloadInterval`.
pub async fn run(node: Arc<Node>, listener: TcpListener, keys: Arc<ApiKeys>) {
    serve(node, listener, keys, MAX_CONNECTIONS).await
}

async fn serve(node: Arc<Node>, listener: TcpListener, keys: Arc<ApiKeys>, max: usize) {
    let reload = {
        let (node, keys) = (node.clone(), keys.clone());
        async move {
            let mut tick = tokio::time::interval(node.config.api.reload_interval);
            loop {
                tokio::select! {
                    _ = node.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match keys.reload() {
                    Ok(true) if keys.is_empty() => tracing::error!(
                        "the API keys file names no key: every API call is refused until it does"
                    ),
                    Ok(true) => tracing::info!("new API keys in force"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "API keys not reloaded; the keys in force stay")
                    }
                }
            }
        }
    };
    tokio::spawn(reload);
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        // Taken before the accept: past the bound, connections wait in the backlog.
        let slot = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (node, keys) = (node.clone(), keys.clone());
        let max_head = node.config.server.max_header_bytes;
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (node, keys) = (node.clone(), keys.clone());
                async move { Ok::<_, std::convert::Infallible>(route(&node, &keys, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(max_head)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "api connection ended with error");
            }
            drop(slot);
        });
    }
}

/// The key presented in `Authorization: Bearer` (the scheme in any case, as HTTP has
/// it) or `X-Api-Key`; an empty one is none.
fn presented_key(h: &http::HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key)
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

async fn route(node: &Arc<Node>, keys: &ApiKeys, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let route = ROUTES
        .iter()
        .find(|(method, p, _)| *p == path && req.method().as_str() == *method);
    let Some((_, _, name)) = route else {
        // Errors are JSON here as everywhere in the API (docs/openapi.json).
        let allowed: Vec<&str> = ROUTES
            .iter()
            .filter(|(_, p, _)| *p == path)
            .map(|(m, _, _)| *m)
            .collect();
        if allowed.is_empty() {
            let e = ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API path");
            return error_response(&e);
        }
        let e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} takes {}", allowed.join(", ")),
        );
        let mut r = error_response(&e);
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    };
    let result = if *name == "openapi" {
        let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(r)
    } else if !presented_key(req.headers()).is_some_and(|k| keys.accepts(k)) {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
        ))
    } else {
        let query = req.uri().query().unwrap_or_default().to_string();
        let traceparent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = if req.method() == Method::POST {
            read_body(node, req).await
        } else {
            Ok(Bytes::new())
        };
        match body {
            Ok(body) => handlers::handle(node, name, &query, &body, traceparent).await,
            Err(e) => Err(e),
        }
    };
    let response = result.unwrap_or_else(|e| error_response(&e));
    node.metrics
        .api_requests
        .with_label_values(&[name, response.status().as_str()])
        .inc();
    response
}

/// The request body, at most twice `limits.maxFrameBytes`.
async fn read_body(node: &Node, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let max = node.config.limits.max_frame_bytes * 2;
    http_body_util::Limited::new(req.into_body(), max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request body: {e} (at most {max} bytes)"),
                )
            } else {
                // Cut off, or badly chunked: not a size the client can fix by sending less.
                ApiError::bad(format!("request body not read: {e}"))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Connections past the bound wait in the backlog until one ends, then are served.
    #[tokio::test]
    async fn connections_past_the_bound_wait_for_a_free_one() {
        let mut config = crate::config::Config::default();
        config.auth.mode = crate::config::AuthMode::Insecure;
        config.server.listen = ([127, 0, 0, 1], 0).into();
        config.api.keys = vec!["k".into()];
        let keys = Arc::new(ApiKeys::new(&config.api).expect("keys"));
        let node = Node::new(config, Default::default()).expect("node");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(node, listener, keys, 2));
        let request = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\n\r\n";
        let answered = |mut c: TcpStream| async move {
            c.write_all(request).await.expect("write");
            let mut status = [0; 12];
            c.read_exact(&mut status).await.expect("answer");
            assert_eq!(&status, b"HTTP/1.1 200");
            c
        };
        let first = answered(TcpStream::connect(addr).await.expect("connect")).await;
        let _second = answered(TcpStream::connect(addr).await.expect("connect")).await;
        let mut late = TcpStream::connect(addr).await.expect("connect (backlog)");
        late.write_all(request).await.expect("write");
        let mut byte = [0; 1];
        let waiting = tokio::time::timeout(Duration::from_millis(300), late.read(&mut byte)).await;
        assert!(waiting.is_err(), "served past the bound: {waiting:?}");
        drop(first);
        let mut status = [0; 12];
        late.read_exact(&mut status)
            .await
            .expect("answer once a slot is free");
        assert_eq!(&status, b"HTTP/1.1 200");
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_served_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn a_key_is_taken_from_a_bearer_of_any_case_or_x_api_key_and_never_empty() {
        let key = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, http::HeaderValue::from_static(value));
            }
            presented_key(&h).map(str::to_string)
        };
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let value: &'static str = Box::leak(format!("{scheme} k1").into_boxed_str());
            assert_eq!(key(&[("authorization", value)]).as_deref(), Some("k1"));
        }
        assert_eq!(key(&[("x-api-key", " k2 ")]).as_deref(), Some("k2"));
        assert_eq!(key(&[("authorization", "Basic k3")]), None);
        assert_eq!(key(&[("x-api-key", "")]), None, "an empty key is none");
        assert_eq!(key(&[("authorization", "Bearer  ")]), None);
    }

    /// The room pattern of docs/openapi.json admits the characters the gateway does in an
    /// inbox's name (`|`, `+` and the `%` of escapes were missing: generated clients
    /// refused `user:auth0|…`), and no other.
    #[test]
    fn the_openapi_room_pattern_has_the_gateways_room_characters() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        let schemas = &doc["components"]["schemas"];
        let pattern = schemas["PublishRequest"]["properties"]["room"]["pattern"]
            .as_str()
            .expect("pattern");
        let class = pattern
            .strip_prefix("^[")
            .and_then(|p| p.strip_suffix("]+$"))
            .expect("^[class]+$");
        let mut allowed = Vec::new();
        let b = class.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if i + 2 < b.len() && b[i + 1] == b'-' {
                allowed.extend(b[i]..=b[i + 2]);
                i += 3;
            } else {
                allowed.push(b[i]);
                i += 1;
            }
        }
        for c in 0x21u8..0x7f {
            let name = match c {
                b'%' => "user:a%C3%AB".to_string(), // `%` only as an escape, in an inbox
                _ => format!("user:a{}", c as char),
            };
            let ok = crate::protocol::validate_room(&name, 128).is_ok();
            assert_eq!(allowed.contains(&c), ok, "{:?}", c as char);
        }
    }
}
