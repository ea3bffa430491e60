//! Connections refused before they become chat sessions, each with its documented answer:
//! a request head over `server.maxHeaderBytes` (431), more unfinished requests from one
//! address than `limits.handshakesPerIp` (closed unanswered), a burst over the admission
//! rate (503 with `Retry-After`), and insecure mode without a user (401). The server stays
//! up and other clients keep chatting.

use e2e::client::Upgrade;
use e2e::{test_config, Client, TestGateway};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A request head over `server.maxHeaderBytes` is refused with 431 on the public port and
/// on the server API's: before, each listener read up to hyper's ~408 KiB for a head that
/// never ended (2,000 such connections took a release build from 11 to 810 MiB). One a
/// little under the limit is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_is_refused_431() {
    let mut cfg = test_config();
    cfg.server.max_header_bytes = 16 * 1024;
    cfg.api.listen = Some(([127, 0, 0, 1], 0).into());
    cfg.api.keys = vec!["k".repeat(32)];
    let gw = TestGateway::start(cfg).await;
    let api = gw.gateway.api_addr.expect("the server API listens");
    for (addr, path) in [(gw.gateway.addr, "/healthz"), (api, "/api/v1/openapi.json")] {
        let head = |pad: usize| {
            let pad = "p".repeat(pad);
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n")
        };
        let (status, _) = e2e::http_request(addr, &head(12 * 1024)).await;
        assert_eq!(status, 200, "{addr}: a head under the limit");
        let (status, _) = e2e::http_request(addr, &head(20 * 1024)).await;
        assert_eq!(status, 431, "{addr}: a head over the limit");
    }
    gw.bystanders_still_chat().await;
    gw.stop().await;
}

/// What a connection reads back after sending a whole request for `/healthz`.
async fn healthz_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A write or read error is an answer too: a closed socket's.
    let _ = stream.write_all(b"Connection: close\r\n\r\n").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(e2e::client::WAIT, stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// `limits.handshakesPerIp` connections from one address that have not finished their
/// request are all it may hold; the next is closed as it is accepted, unanswered. Before,
/// connections in the header phase counted against nothing: one client could hold as many
/// as the fd limit allows, each up to `server.maxHeaderBytes` for the header timeout.
/// WebSockets do not count, and a finished request frees its connection's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_are_not_websockets_yet_are_bounded_per_ip() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = test_config();
    cfg.limits.handshakes_per_ip = 3;
    let gw = TestGateway::start(cfg).await;
    let addr = gw.gateway.addr;
    let mut sockets = Vec::new();
    for user in ["ws-a", "ws-b", "ws-c"] {
        sockets.push(gw.connect(user).await);
    }
    let mut partial = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .await
            .expect("a head's first lines");
        partial.push(s);
    }
    let mut fourth = tokio::net::TcpStream::connect(addr).await.expect("connect");
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .await
        .ok();
    let answer = healthz_answer(&mut fourth).await;
    assert!(
        answer.is_empty(),
        "the fourth is closed unanswered: {answer}"
    );
    for mut s in partial {
        let answer = healthz_answer(&mut s).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "held and served: {answer}"
        );
    }
    // Their slots are free once the gateway has closed them (just after they read the end).
    let until = tokio::time::Instant::now() + e2e::client::WAIT;
    while e2e::http_request(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .0 != 200
    {
        assert!(tokio::time::Instant::now() < until, "no slot came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.metric("chatgateway_connections_refused_total").await >= 1.0);
    gw.bystanders_still_chat().await;
    drop(sockets);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_a_burst_with_503_and_retry_after() {
    let mut cfg = test_config();
    cfg.admission.rate = 2;
    let gw = TestGateway::start(cfg).await;
    let mut admitted = Vec::new();
    let mut refusals = Vec::new();
    // Within a second or two at most 2 per second get in; the rest are told when to retry.
    for i in 0..12 {
        let req = gw
            .ws_url(&format!("user=burst{i}"))
            .into_client_request()
            .expect("request");
        match Client::upgrade(req).await {
            Upgrade::Ok(c, _) => admitted.push(c),
            Upgrade::Refused(r) => refusals.push(r),
            Upgrade::Failed(e) => panic!("{e}"),
        }
    }
    assert!(
        !admitted.is_empty() && admitted.len() <= 6,
        "{} admitted",
        admitted.len()
    );
    assert!(refusals.len() >= 6, "{} refused", refusals.len());
    for r in &refusals {
        assert_eq!(r.status, 503, "{r:?}");
        let after = r.retry_after();
        assert!(
            after.is_some_and(|s| (1..=3).contains(&s)),
            "Retry-After must be 1-3 s: {r:?}"
        );
    }
    assert_eq!(
        gw.metric("chatgateway_upgrades_rejected_total{reason=\"admission\"}")
            .await,
        refusals.len() as f64
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_mode_needs_a_user() {
    let gw = TestGateway::default().await;
    let err = Client::connect(&gw.ws_url(""))
        .await
        .err()
        .expect("refused");
    assert!(err.starts_with("HTTP 401"), "{err}");
    gw.stop().await;
}
