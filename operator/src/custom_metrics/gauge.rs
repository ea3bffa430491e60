//! Reading one pod's `chatgateway_connections` over HTTP: `GET /metrics` and the gauge's
//! line in the Prometheus text.
//!
//! Whoever can create a pod with the gateway's labels and a port named `http` decides
//! what the operator reads here, so the response is bounded before it is read
//! ([`MAX_BODY`], [`MAX_RESPONSE_BUFFER`]) and scanned as it arrives rather than
//! collected: [`CONCURRENCY`](super::scrape) pods are read at once on every replica, each
//! of which is also the reconciler.

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// The gauge read from each pod.
pub const GAUGE: &str = "chatgateway_connections";

/// Most bytes of a `/metrics` body read looking for the gauge; a pod whose gauge is not
/// within them is not read. A real gateway's whole body is 5630 bytes with the default
/// config and two clients connected (measured by the test
/// `reads_a_real_gateway_and_refuses_a_dead_port`, which fails should it reach a tenth of
/// this): its series are per route, hook and reason, all bounded by the config, none per
/// user or room. 256 KiB leaves room for many routes and hooks, while the 64 pods read at
/// once hold at most 64 × (256 + 64) KiB = 20 MiB (bodies without a line break, plus
/// [`MAX_RESPONSE_BUFFER`]) of the operator's 256 MiB memory limit.
pub const MAX_BODY: usize = 256 << 10;

/// hyper's read buffer per pod (its default is ~400 KiB): bounds the response head a pod
/// may send, and the chunks the body arrives in. The gateway's head is ~100 bytes.
pub const MAX_RESPONSE_BUFFER: usize = 64 << 10;

/// Why a pod could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// TCP connect failed.
    #[error("connecting: {0}")]
    Connect(#[from] std::io::Error),
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// Answered, but not 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Answered 200 without the gauge.
    #[error("no {GAUGE} sample in the response")]
    NoGauge,
    /// The body went on past [`MAX_BODY`] without the gauge: not a gateway's /metrics.
    #[error("no {GAUGE} sample in the first {0} bytes of the response (a gateway's is a few KiB)")]
    TooLarge(usize),
}

/// `GET http://addr/metrics` and the gauge's value.
pub async fn read_connections(addr: SocketAddr, timeout: Duration) -> Result<u64, ScrapeError> {
    tokio::time::timeout(timeout, async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get("/metrics")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ScrapeError::Http(e.to_string()))?;
            if response.status() != hyper::StatusCode::OK {
                return Err(ScrapeError::Status(response.status().as_u16()));
            }
            find_gauge(response.into_body()).await
        }
        .await;
        // Also ends a body left unread after the gauge was found.
        conn.abort();
        result
    })
    .await
    .map_err(|_| ScrapeError::Timeout(timeout))?
}

/// Scans `body` line by line as it arrives and stops at the gauge: only an unfinished line
/// is kept, never the body, and nothing after the gauge is read.
async fn find_gauge(mut body: Incoming) -> Result<u64, ScrapeError> {
    let mut unfinished: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ScrapeError::Http(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen += data.len();
        unfinished.extend_from_slice(&data);
        if let Some(end) = unfinished.iter().rposition(|&b| b == b'\n') {
            // Whole lines only, so no UTF-8 sequence is cut in two.
            if let Some(n) = parse_connections(&String::from_utf8_lossy(&unfinished[..=end])) {
                return Ok(n);
            }
            unfinished.drain(..=end);
        }
        if seen > MAX_BODY {
            return Err(ScrapeError::TooLarge(MAX_BODY));
        }
    }
    parse_connections(&String::from_utf8_lossy(&unfinished)).ok_or(ScrapeError::NoGauge)
}

/// The unlabelled `chatgateway_connections` sample in Prometheus text; `None` when it is
/// missing or not a non-negative whole number.
pub fn parse_connections(text: &str) -> Option<u64> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(GAUGE)?;
            let rest = rest.strip_prefix("{}").unwrap_or(rest);
            if !rest.starts_with([' ', '\t']) {
                return None; // another metric with this prefix, or labels
            }
            let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
            (value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < 9.0e15)
                .then_some(value as u64)
        })
}

#[cfg(test)]
#[path = "gauge_tests.rs"]
mod tests;
