//! Test harness for chatgateway: an in-process gateway on a free port, a gateway process,
//! a protocol v1 client, and JWT helpers.

// The module docs link to the private parts they are built from: read them with
// `make doc` (`--document-private-items`), where those links resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub mod blackhole;
pub mod client;
pub mod engines;
pub mod fleet;
pub mod gateways;
pub mod jwt;
pub mod keys;
pub mod loadgen;
pub mod otlp;
pub mod presence;
pub mod process;
pub mod procstat;
pub mod rawws;
pub mod redis;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod resilient;
pub mod tls;
pub mod traffic;

use chat_gateway::config::{AuthMode, Config};
use chat_gateway::Gateway;
pub use client::{Client, Connected};
use std::net::SocketAddr;
use std::time::Duration;

/// A gateway running inside the test process on 127.0.0.1 and a free port.
pub struct TestGateway {
    /// The running gateway (its `node` can be inspected).
    pub gateway: Gateway,
}

/// A config for tests: insecure auth, loopback, port 0, short heartbeat off by default.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.auth.mode = AuthMode::Insecure;
    // A test that switches to JWT only needs a key: tokens from `jwt` name this audience.
    c.auth.jwt.audience = Some(jwt::AUDIENCE.into());
    c.node.id = "test-node".into();
    c
}

impl TestGateway {
    /// Starts a gateway with `config` (its listen address is forced to a free port).
    pub async fn start(mut config: Config) -> TestGateway {
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let gateway = Gateway::start(config).await.expect("gateway starts");
        TestGateway { gateway }
    }

    /// Starts a gateway with [`test_config`].
    pub async fn default() -> TestGateway {
        Self::start(test_config()).await
    }

    /// `ws://` URL of `/ws` with the given query string.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.gateway.addr)
    }

    /// `http://` base URL.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr)
    }

    /// Connects as `user` in insecure mode.
    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(&format!("user={user}")))
            .await
            .unwrap_or_else(|e| panic!("connect {user}: {e}"))
    }

    /// The value of a metric sample from `/metrics`; panics when the sample is absent (a
    /// renamed metric or label must not read as 0).
    pub async fn metric(&self, sample: &str) -> f64 {
        let body = http_get(self.gateway.addr, "/metrics").await.1;
        parse_metric(&body, sample)
    }

    /// The value of a metric sample, or None while it does not exist yet (a labelled
    /// series appears with its first increment): for polling until something happened.
    pub async fn sample(&self, sample: &str) -> Option<f64> {
        let body = http_get(self.gateway.addr, "/metrics").await.1;
        find_metric(&body, sample)
    }

    /// Polls `sample` until it reaches `at_least` and returns its value; panics naming it
    /// after 10 s. For what a connection's task counts after its socket is already gone.
    pub async fn wait_sample(&self, sample: &str, at_least: f64) -> f64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.sample(sample).await {
                Some(v) if v >= at_least => return v,
                v => assert!(
                    std::time::Instant::now() < deadline,
                    "{sample} is {v:?} after 10 s, not {at_least}"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Two new clients join a room and chat: what a test of bad input or a limit checks
    /// last (the gateway is still up and serving others). Panics if they cannot.
    pub async fn bystanders_still_chat(&self) {
        let mut a = self.connect("by-a").await;
        let mut b = self.connect("by-b").await;
        a.join("calm").await;
        b.join("calm").await;
        let ack = a.send("calm", serde_json::json!("still here")).await;
        assert_eq!(ack["type"], "ok");
        let m = b.next_msg().await;
        assert_eq!(m["body"], "still here");
    }

    /// Stops the gateway.
    pub async fn stop(self) {
        self.gateway.shutdown(Duration::from_secs(5)).await;
    }
}

/// The value of `sample` (name plus labels, exactly as exposed) in Prometheus text;
/// panics, listing the samples of that metric that do exist, when it is absent.
pub fn parse_metric(body: &str, sample: &str) -> f64 {
    find_metric(body, sample).unwrap_or_else(|| {
        let name = sample.split('{').next().unwrap_or(sample);
        let similar: Vec<&str> = body
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(name))
            .collect();
        panic!("no sample {sample} in /metrics; samples of {name}: {similar:?}")
    })
}

/// Finds `sample` (name plus labels, exactly as exposed) in Prometheus text.
pub fn find_metric(body: &str, sample: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok())?
    })
}

/// A minimal HTTP/1.1 GET over a raw socket: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends a raw HTTP/1.1 request and reads the whole response: (status, body).
pub async fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
