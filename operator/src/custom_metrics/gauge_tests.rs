//! Parsing the gauge, a real gateway read over HTTP, and bodies that are not a gateway's.

use super::*;
use crate::custom_metrics::testing::serve_metrics;

#[test]
fn parses_the_unlabelled_gauge_only() {
    let text = "# HELP chatgateway_connections open\n# TYPE chatgateway_connections gauge\n\
                chatgateway_connections_accepted_total 9\nchatgateway_connections 42\n";
    assert_eq!(parse_connections(text), Some(42));
    assert_eq!(
        parse_connections("chatgateway_connections{} 3 1700000000000\n"),
        Some(3)
    );
    for bad in [
        "",
        "chatgateway_connections -1\n",
        "chatgateway_connections NaN\n",
        "chatgateway_connections 1.5\n",
        "chatgateway_connections\n",
        "chatgateway_connections_accepted_total 4\n",
    ] {
        assert_eq!(parse_connections(bad), None, "{bad:?}");
    }
}

/// The whole `/metrics` body at `addr`, as a plain client reads it.
async fn whole_body(addr: SocketAddr) -> Bytes {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

/// A real gateway (the gateway crate, in this process) with real WebSocket clients is
/// read; a closed port is an error, not a zero.
#[tokio::test]
async fn reads_a_real_gateway_and_refuses_a_dead_port() {
    let gw = e2e::TestGateway::default().await;
    let addr = gw.gateway.addr;
    let read = || read_connections(addr, Duration::from_secs(5));
    assert_eq!(read().await.expect("read"), 0);
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    assert_eq!(read().await.expect("read"), 2);
    // What MAX_BODY's comment says of a real gateway's /metrics, with traffic on it.
    let size = whole_body(addr).await.len();
    assert!(
        size < MAX_BODY / 10,
        "a gateway's /metrics is {size} bytes: MAX_BODY ({MAX_BODY}) leaves too little room"
    );
    drop((alice, bob));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let err = read_connections(dead_addr, Duration::from_secs(5))
        .await
        .expect_err("dead port");
    assert!(matches!(err, ScrapeError::Connect(_)), "{err}");
    gw.stop().await;
}

/// A body that is not a gateway's (a MiB of comments before the gauge) is not read; the
/// same gauge in a normal body is, and so is one found before a long tail, which is not
/// read.
#[tokio::test]
async fn a_body_past_the_bound_is_not_read() {
    let filler = "# padding padding padding padding padding padding padding padding\n";
    let mib = filler.repeat((1 << 20) / filler.len() + 1);
    let gauge = "# TYPE chatgateway_connections gauge\nchatgateway_connections 5\n";

    let huge = serve_metrics(format!("{mib}{gauge}").into_bytes()).await;
    let err = read_connections(huge, Duration::from_secs(30))
        .await
        .expect_err("a MiB before the gauge");
    assert!(matches!(err, ScrapeError::TooLarge(MAX_BODY)), "{err}");

    let normal = serve_metrics(format!("{filler}{gauge}{filler}").into_bytes()).await;
    let n = read_connections(normal, Duration::from_secs(30)).await;
    assert_eq!(n.expect("a normal body"), 5);

    let early = serve_metrics(format!("{gauge}{mib}").into_bytes()).await;
    let n = read_connections(early, Duration::from_secs(30)).await;
    assert_eq!(n.expect("the gauge first"), 5);

    // Without a final newline, and without the gauge at all.
    let unterminated = serve_metrics(b"chatgateway_connections 8".to_vec()).await;
    let n = read_connections(unterminated, Duration::from_secs(30)).await;
    assert_eq!(n.expect("last line unterminated"), 8);
    let none = serve_metrics(filler.as_bytes().to_vec()).await;
    let err = read_connections(none, Duration::from_secs(30))
        .await
        .expect_err("no gauge");
    assert!(matches!(err, ScrapeError::NoGauge), "{err}");
}
