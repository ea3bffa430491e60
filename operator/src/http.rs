//! The operator's own HTTP endpoints: /metrics, /healthz and /readyz.

use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a client has to send a request's head, from its connection or its previous
/// response (hyper starts the timer again on an idle keep-alive connection): a client
/// that sends half a head or holds an idle connection is closed after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a request hyper buffers (its minimum): the scrapers' and probes' requests
/// are a few hundred bytes; hyper's default lets each connection hold about 400 KiB.
const MAX_BUF: usize = 8 * 1024;
/// Connections served at once: Prometheus, the kubelet's probes and a person with curl
/// need a handful. More wait in the listen backlog until one ends, so a client opening
/// connections in a loop cannot take the operator's memory or file descriptors.
const MAX_CONNECTIONS: usize = 32;

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    serve_with_readiness(listener, metrics, || true).await
}

/// Like [`serve`], with `/readyz` answering 503 while `ready()` is false (a replica
/// serving the custom metrics API is ready once it has its certificate and fresh
/// readings).
pub async fn serve_with_readiness<R>(listener: TcpListener, metrics: Metrics, ready: R)
where
    R: Fn() -> bool + Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Taken before the accept: past the bound, connections wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(req, metrics.clone(), ready()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    metrics: Metrics,
    ready: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if ready => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: no custom metrics serving certificate or no fresh scrape yet\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, Metrics::default()));
        addr
    }

    /// Reads until the server closes; what it sent.
    async fn until_closed(c: &mut TcpStream) -> String {
        let mut got = Vec::new();
        // A reset is a close too.
        let _ = c.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).into_owned()
    }

    /// A half-sent request head and an idle connection are closed after the header
    /// timeout (paused time: the runtime jumps to it once every task waits).
    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_request_is_closed() {
        let addr = server().await;
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        for c in [&mut half, &mut idle] {
            let closed = tokio::time::timeout(3 * HEADER_READ_TIMEOUT, until_closed(c)).await;
            assert_eq!(closed.as_deref(), Ok(""), "never closed");
        }
        assert!(
            started.elapsed() >= HEADER_READ_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
    }

    /// A request head past the buffer bound is refused, not buffered.
    #[tokio::test]
    async fn a_request_head_past_the_bound_is_refused() {
        let addr = server().await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let pad = "a".repeat(MAX_BUF);
        let head = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {pad}\r\n\r\n"
        );
        // The server may close before reading it all.
        let _ = c.write_all(head.as_bytes()).await;
        let answer = until_closed(&mut c).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }

    /// Connections past the bound wait until one ends, then are served.
    #[tokio::test]
    async fn connections_past_the_bound_wait_for_a_free_one() {
        let addr = server().await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            // Served (its slot taken) once it is answered.
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0; 12];
            c.read_exact(&mut buf).await.expect("answer");
            assert_eq!(&buf, b"HTTP/1.1 200");
            held.push(c);
        }
        let mut late = TcpStream::connect(addr).await.expect("connect (backlog)");
        late.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0; 1];
        let waiting = tokio::time::timeout(Duration::from_millis(300), late.read(&mut buf)).await;
        assert!(waiting.is_err(), "served past the bound: {waiting:?}");
        drop(held.pop());
        let answer = until_closed(&mut late).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
