//! WebSocket forwarding routes against real upstream WebSocket servers written here.

use chat_gateway::config::RouteConfig;
use e2e::{http_get, test_config, TestGateway};
use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

/// What an upstream saw of one connection.
#[derive(Debug, Clone, Default)]
struct Seen {
    path: String,
    headers: BTreeMap<String, String>,
}

#[derive(Clone, Copy)]
enum Behaviour {
    Echo,
    CloseWith(u16),
    NeverRead,
    /// Answers each text message with it twice over.
    Double,
}

/// A WebSocket upstream on a free port; returns its address and what it saw.
async fn upstream(b: Behaviour) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                // The callback's error type is tungstenite's (a whole HTTP response).
                #[allow(clippy::result_large_err)]
                let cb = |req: &Request, resp: Response| {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
                        path: req.uri().to_string(),
                        headers,
                    });
                    Ok(resp)
                };
                let cfg = WebSocketConfig::default()
                    .max_message_size(Some(4 << 20))
                    .max_frame_size(Some(4 << 20));
                let Ok(mut ws) =
                    tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(cfg)).await
                else {
                    return;
                };
                match b {
                    Behaviour::Echo => {
                        while let Some(Ok(m)) = ws.next().await {
                            if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                                break;
                            }
                        }
                    }
                    Behaviour::CloseWith(code) => {
                        let _ = ws.next().await;
                        let _ = ws
                            .close(Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: "bye".into(),
                            }))
                            .await;
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                    Behaviour::Double => {
                        while let Some(Ok(Message::Text(t))) = ws.next().await {
                            if ws.send(Message::text(t.repeat(2))).await.is_err() {
                                break;
                            }
                        }
                    }
                    Behaviour::NeverRead => {
                        tokio::time::sleep(Duration::from_secs(120)).await;
                        drop(ws);
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn route(name: &str, prefix: &str, upstream: &str, strip: bool) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        path_prefix: prefix.into(),
        upstream: upstream.into(),
        strip_prefix: strip,
        retries: 1,
        retry_backoff: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &TestGateway, path_and_query: &str) -> Result<Ws, u16> {
    let mut req = format!("ws://{}{path_and_query}", gw.gateway.addr)
        .into_client_request()
        .expect("req");
    req.headers_mut().insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(4 << 20));
    match tokio_tungstenite::connect_async_with_config(req, Some(cfg), true).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

async fn echo_once(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text.to_string()))
        .await
        .expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no echo: {other:?}"),
        }
    }
}

/// The code and reason of the close frame the gateway sends (frames before it skipped).
async fn close_of(ws: &mut Ws) -> Option<(u16, String)> {
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Message::Close(Some(f)) = m {
            return Some((u16::from(f.code), f.reason.to_string()));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_strip_and_forwarded_headers() {
    let (up1, seen1) = upstream(Behaviour::Echo).await;
    let (up2, seen2) = upstream(Behaviour::Echo).await;
    let mut cfg = test_config();
    let mut short = route("api", "/api", &up1, true);
    short.headers.insert("X-Team".into(), "blue".into());
    let mut deep = route("deep", "/api/deep", &format!("ws://{up2}/base"), false);
    deep.forward_user = true;
    cfg.routes = vec![short, deep];
    let gw = TestGateway::start(cfg).await;

    let mut a = connect(&gw, "/api/deep/x?user=alice&room=5")
        .await
        .expect("deep route");
    assert_eq!(echo_once(&mut a, "hello deep").await, "hello deep");
    let s = seen2.lock().expect("seen")[0].clone();
    assert_eq!(
        s.path, "/base/api/deep/x?room=5",
        "no strip, credentials removed from the query"
    );
    assert_eq!(
        s.headers.get("x-chat-user").map(String::as_str),
        Some("alice")
    );
    assert_eq!(
        s.headers.get("traceparent").map(String::as_str),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "the client's trace context goes through"
    );
    // The longest prefix of the normalised path wins, not of the raw one (`/api`).
    let mut c = connect(&gw, "/api/x/../deep//y?user=carol")
        .await
        .expect("a route");
    assert_eq!(echo_once(&mut c, "hello dots").await, "hello dots");
    let s = seen2.lock().expect("seen").get(1).map(|s| s.path.clone());
    assert_eq!(s.as_deref(), Some("/base/api/deep/y"), "on the deep route");
    let mut b = connect(&gw, "/api/y?user=bob").await.expect("short route");
    assert_eq!(echo_once(&mut b, "hello short").await, "hello short");
    let s = seen1.lock().expect("seen")[0].clone();
    assert_eq!(s.path, "/y", "prefix stripped");
    assert_eq!(s.headers.get("x-team").map(String::as_str), Some("blue"));
    assert_eq!(
        s.headers.get("x-chat-user").map(String::as_str),
        Some("bob")
    );
    assert_eq!(
        gw.metric("chatgateway_forward_connections{route=\"api\"}")
            .await,
        1.0
    );
    // Each forwarded upgrade counts as accepted, as its refusals count as rejected.
    assert_eq!(
        gw.metric("chatgateway_connections_accepted_total").await,
        3.0
    );
    assert!(
        gw.metric("chatgateway_forward_frames_total{direction=\"up\",route=\"deep\"}")
            .await
            >= 1.0
    );
    // Authentication happens at the gateway, before any dial.
    assert_eq!(connect(&gw, "/api/y").await.err(), Some(401));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_and_a_dead_upstream_is_502_after_retries() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string() // closed again when dropped
    };
    let mut cfg = test_config();
    cfg.routes = vec![route("dead", "/dead", &dead, false)];
    let gw = TestGateway::start(cfg).await;
    assert_eq!(connect(&gw, "/nowhere?user=a").await.err(), Some(404));
    assert_eq!(http_get(gw.gateway.addr, "/nowhere").await.0, 404);
    assert_eq!(connect(&gw, "/dead/x?user=a").await.err(), Some(502));
    assert_eq!(
        gw.metric("chatgateway_forward_dial_errors_total{route=\"dead\"}")
            .await,
        2.0,
        "1 try + 1 retry"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_code_reaches_the_client() {
    let (up, _) = upstream(Behaviour::CloseWith(4001)).await;
    let mut cfg = test_config();
    cfg.routes = vec![route("closer", "/closer", &up, false)];
    let gw = TestGateway::start(cfg).await;
    let mut ws = connect(&gw, "/closer?user=a").await.expect("connect");
    ws.send(Message::text("anything")).await.expect("send");
    assert_eq!(close_of(&mut ws).await, Some((4001, "bye".to_string())));
    gw.stop().await;
}

/// An upstream that breaks the route's limit is the upstream's failure, not the client's:
/// the client gets 1014 (before, the 1009 meant for the upstream). Read raw: tungstenite
/// reports a 1014 it receives as 1002 (it predates the code's registration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_message_over_the_limit_closes_the_client_1014() {
    use e2e::rawws::{masked_header, read_to_end, upgrade};
    use tokio::io::AsyncWriteExt;
    let (up, _) = upstream(Behaviour::Double).await;
    let mut cfg = test_config();
    let mut double = route("double", "/double", &up, false);
    double.max_frame_bytes = 4096;
    cfg.routes = vec![double];
    let gw = TestGateway::start(cfg).await;
    let mut ws = connect(&gw, "/double?user=a").await.expect("connect");
    assert_eq!(echo_once(&mut ws, &"a".repeat(2000)).await.len(), 4000);
    let mut tcp = upgrade(gw.gateway.addr, "/double?user=b").await;
    let doubled_too_big = [masked_header(0x1, 3000), vec![b'b'; 3000]].concat();
    tcp.write_all(&doubled_too_big).await.expect("send");
    let ending = read_to_end(&mut tcp).await;
    assert_eq!(ending.close_code, Some(1014), "{ending:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_both_ways() {
    let (up, _) = upstream(Behaviour::Echo).await;
    let mut cfg = test_config();
    cfg.routes = vec![route("big", "/big", &up, false)];
    let gw = TestGateway::start(cfg).await;
    let mut ws = connect(&gw, "/big?user=a").await.expect("connect");
    let payload = "z".repeat(900 * 1024);
    assert_eq!(echo_once(&mut ws, &payload).await.len(), payload.len());
    // Over the route's maxFrameBytes (1 MiB): closed with 1009, not buffered.
    let _ = ws.send(Message::text("q".repeat(2 << 20))).await;
    assert_eq!(close_of(&mut ws).await.map(|c| c.0), Some(1009));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_pushes_back_instead_of_filling_the_gateway() {
    let (up, _) = upstream(Behaviour::NeverRead).await;
    let (echo, _) = upstream(Behaviour::Echo).await;
    let mut cfg = test_config();
    cfg.routes = vec![
        route("slow", "/slow", &up, false),
        route("echo", "/echo", &echo, false),
    ];
    let gw = TestGateway::start(cfg).await;
    let mut ws = connect(&gw, "/slow?user=a").await.expect("connect");
    let chunk = "s".repeat(64 * 1024);
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(2),
            ws.send(Message::text(chunk.clone())),
        )
        .await
        {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => panic!("send failed instead of blocking: {e}"),
            Err(_) => break, // blocked: backpressure reached the client
        }
        assert!(sent < 256 << 20, "gateway kept accepting: {sent} bytes");
    }
    // What is in flight is bounded by socket buffers plus one message per direction.
    assert!(
        sent < 64 << 20,
        "{sent} bytes accepted before the client was pushed back"
    );
    let piped = gw
        .metric("chatgateway_forward_bytes_total{direction=\"up\",route=\"slow\"}")
        .await;
    assert!(piped <= sent as f64);
    // The gateway is still fine for everyone else.
    assert_eq!(http_get(gw.gateway.addr, "/healthz").await.0, 200);
    let mut other = connect(&gw, "/echo?user=b").await.expect("other route");
    assert_eq!(echo_once(&mut other, "still here").await, "still here");
    eprintln!("slow upstream: client blocked after {} KiB", sent / 1024);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_forwarded_connections_with_1012() {
    let (up, _) = upstream(Behaviour::Echo).await;
    let mut cfg = test_config();
    cfg.routes = vec![route("echo", "/echo", &up, false)];
    cfg.drain.accept_grace = Duration::ZERO;
    cfg.drain.timeout = Duration::from_secs(5);
    let gw = TestGateway::start(cfg).await;
    let mut ws = connect(&gw, "/echo?user=a").await.expect("connect");
    assert_eq!(echo_once(&mut ws, "before").await, "before");
    let force = tokio_util::sync::CancellationToken::new();
    let outcome = gw.gateway.drain(&force).await;
    assert_eq!(outcome.evicted, 1);
    assert_eq!(close_of(&mut ws).await.map(|c| c.0), Some(1012));
    gw.stop().await;
}

/// A route's client is metered as a chat client is: a message's empty fragments that never
/// end (no message, so the upstream sees nothing) close with 1008, while whole messages,
/// text or binary, pass beyond the frame burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_flood_on_a_route_closes_1008_and_whole_messages_pass() {
    let (up, _) = upstream(Behaviour::Echo).await;
    let mut cfg = test_config();
    (cfg.limits.frame_rate, cfg.limits.frame_burst) = (10.0, 50);
    cfg.routes = vec![route("echo", "/echo", &up, false)];
    let gw = TestGateway::start(cfg).await;
    let mut ws = connect(&gw, "/echo?user=a").await.expect("connect");
    for i in 0..100 {
        assert_eq!(echo_once(&mut ws, &format!("{i}")).await, format!("{i}"));
    }
    for _ in 0..100 {
        ws.send(Message::binary(vec![7u8; 10]))
            .await
            .expect("binary");
    }
    let mut binary = 0;
    while binary < 100 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => binary += usize::from(b.len() == 10),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no echo: {other:?}"),
        }
    }
    for frame in e2e::client::endless_message(1000) {
        if ws.send(frame).await.is_err() {
            break;
        }
    }
    let expected = Some((1008, "too many frames".to_string()));
    assert_eq!(close_of(&mut ws).await, expected);
    gw.stop().await;
}

/// A route's client refused for what it sent (too big, not UTF-8, a broken frame, too many
/// frames) reads its close code and an orderly end even while it writes on (see the same
/// test of the chat endpoint in limits.rs); before, invalid UTF-8 and broken frames were
/// reported to it as 1014 `upstream failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_route_client_that_writes_on_reads_its_close_and_a_clean_end() {
    use e2e::rawws::{assert_refused, refused_frames};
    let (up, _) = upstream(Behaviour::Echo).await;
    let mut cfg = test_config();
    (cfg.limits.frame_rate, cfg.limits.frame_burst) = (10.0, 100);
    let mut echo = route("echo", "/echo", &up, false);
    echo.max_frame_bytes = 4096;
    cfg.routes = vec![echo];
    let gw = TestGateway::start(cfg).await;
    let path = |user: &str| format!("/echo?user={user}");
    assert_refused(gw.gateway.addr, path, refused_frames()).await;
    gw.stop().await;
}

/// TIME_WAIT sockets on this machine whose local port is `local` and remote port is
/// `remote` (either may be 0: any), from /proc/net/tcp (IPv4; state 06).
fn time_waits(local: u16, remote: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| {
        let hex = addr.rsplit(':').next().unwrap_or_default();
        u16::from_str_radix(hex, 16).unwrap_or_default()
    };
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "06"
                && (local == 0 || port(f[1]) == local)
                && (remote == 0 || port(f[2]) == remote)
        })
        .count()
}

/// The gateway is its upstream's client: after the close handshake it leaves closing the
/// socket to the upstream (RFC 6455, 7.1.1), so each connection the client closed ends
/// in order, the TIME_WAIT on the upstream's side. Before, the gateway shut its socket
/// right after its close frame and the upstream's close reply met a reset: no connection
/// ended in order (no TIME_WAIT on either side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_closes_its_socket_first_and_keeps_the_time_wait() {
    let (up, _) = upstream(Behaviour::Echo).await;
    let up_port: u16 = up
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut cfg = test_config();
    cfg.routes = vec![route("echo", "/echo", &up, false)];
    let gw = TestGateway::start(cfg).await;
    for i in 0..20 {
        let mut ws = connect(&gw, &format!("/echo?user=u{i}"))
            .await
            .expect("connect");
        assert_eq!(echo_once(&mut ws, "hi").await, "hi");
        ws.close(None).await.expect("close");
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    }
    // Each connection's last socket closes within the close handshake's second.
    let mut upstream_side = 0;
    for _ in 0..50 {
        upstream_side = time_waits(up_port, 0);
        if upstream_side >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        time_waits(0, up_port),
        0,
        "TIME_WAITs on the gateway's side"
    );
    assert_eq!(upstream_side, 20, "TIME_WAITs on the upstream's side");
    gw.stop().await;
}

/// A client's close frame is answered, on a route as on the chat endpoint, before the
/// socket ends: before, tungstenite's answer waited for a write that never came, and the
/// client saw its socket end unanswered (tungstenite: a reset without a closing
/// handshake; a browser: 1006).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_answered_on_a_route_and_on_the_chat_endpoint() {
    let (up, _) = upstream(Behaviour::Echo).await;
    let mut cfg = test_config();
    cfg.routes = vec![route("echo", "/echo", &up, false)];
    let gw = TestGateway::start(cfg).await;
    for path in ["/echo?user=a", "/ws?user=b"] {
        let mut ws = connect(&gw, path).await.expect("connect");
        ws.send(Message::text("{}")).await.expect("send");
        let bye = CloseFrame {
            code: CloseCode::from(4000),
            reason: "bye".into(),
        };
        ws.close(Some(bye)).await.expect("close");
        let answer = loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                other => panic!("{path}: no answer to the close: {other:?}"),
            }
        };
        assert_eq!(answer, Some(4000), "{path}");
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        assert!(matches!(end, Ok(None)), "{path}: {end:?}");
    }
    gw.stop().await;
}
