//! Hostile clients (issue 18), over real sockets: a poisoned history read by page and by
//! replay in a real gateway process (its RSS measured from /proc), a client that stops
//! reading, a second device and unacknowledged DMs, a traceparent built to break the
//! pub/sub payload, forwarded paths that try to leave their route, and a client that pings
//! but never reads (`pings`).

use chat_gateway::config::RouteConfig;
use chat_gateway::engine::{Broker, Publish};
use chat_gateway::hub::Hub;
use e2e::gateways::Gateways;
use e2e::process::GatewayProcess;
use e2e::redis::RedisServer;
use e2e::{http_request, procstat, test_config, Client, TestGateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[path = "hostile/pings.rs"]
mod pings;

/// What the history bomb may add to the gateway's resident memory while one client pages
/// through 500 messages of 63 KB (32 MB) and then replays all of them. Before issue 18 one
/// `history` call of this room took a release build from 42 MB to 568 MB (and closed the
/// reader with 1013); a page is now at most `historyPageBytes` (256 KiB) and a replay
/// streams in `replayChunkBytes` (128 KiB) chunks at the reader's pace.
const BOMB_RSS_BOUND: u64 = 32 << 20;

/// Writes 500 messages of 63 KB into one room of a Redis, through the engine itself (a
/// client would need minutes at the default send rate; the room is the same).
async fn poison(redis: &RedisServer, prefix: &str, room: &str) {
    let engine = redis.engine(prefix, Arc::new(Hub::default())).await;
    let body = serde_json::value::to_raw_value(&"x".repeat(63_000)).expect("raw");
    for i in 0..500 {
        engine
            .publish(Publish {
                room: room.into(),
                from: "mallory".into(),
                msg_id: format!("bomb{i}"),
                body: body.clone(),
                traceparent: None,
            })
            .await
            .expect("publish");
    }
}

/// Samples a process's RSS every few ms until stopped; returns the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(u) = procstat::usage(pid) {
                    p.fetch_max(u.rss_bytes, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler { stop, peak, thread }
    }

    fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_bomb_keeps_rss_bounded_and_the_reader_connected() {
    let redis = RedisServer::start();
    let prefix = format!("bomb{:08x}", rand::random::<u32>());
    poison(&redis, &prefix, "bomb").await;
    let url = redis.url();
    let gw = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_ENGINE", "redis"),
        ("CHATGW_REDIS__URL", &url),
        ("CHATGW_REDIS__KEY_PREFIX", &prefix),
        ("CHATGW_LIMITS__MESSAGE_RATE", "1000"),
        ("CHATGW_LIMITS__USER_MESSAGE_RATE", "0"),
        ("CHATGW_LIMITS__MESSAGE_BURST", "1000"),
    ]);
    gw.wait_ready(200, Duration::from_secs(30));
    let pid = gw.child.id();
    let mut reader = Client::connect(&gw.ws_url("user=reader"))
        .await
        .expect("connect");
    // Reading history needs the room joined (the default namespace's rule).
    let joined = reader
        .request(json!({"type": "join", "room": "bomb"}))
        .await;
    assert_eq!(joined["type"], "ok", "{joined}");
    let warm = reader
        .request(json!({"type": "history", "room": "bomb", "limit": 1}))
        .await;
    assert_eq!(warm["type"], "ok", "{warm}");
    let base = procstat::usage(pid).expect("/proc").rss_bytes;
    let sampler = RssSampler::start(pid);

    // Every page of the poisoned room, newest first, as the demo page and client.js read.
    let mut paged = BTreeSet::new();
    let mut before: Option<u64> = None;
    let mut pages = 0;
    loop {
        let mut cmd = json!({"type": "history", "room": "bomb", "limit": 500});
        if let Some(b) = before {
            cmd["before"] = json!(b);
        }
        let page = reader.request(cmd).await;
        assert_eq!(page["type"], "ok", "page {pages}: {page}");
        let seqs: Vec<u64> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect();
        assert!(
            !seqs.is_empty() && seqs.len() < 500,
            "capped by bytes: {}",
            seqs.len()
        );
        paged.extend(seqs.iter().copied());
        pages += 1;
        if page["more"] == false {
            break;
        }
        before = seqs.first().copied();
    }
    assert_eq!(
        paged,
        (1..=500).collect::<BTreeSet<u64>>(),
        "every message once"
    );

    // All of it again as a replay: a join from seq 0.
    let left = reader
        .request(json!({"type": "leave", "room": "bomb"}))
        .await;
    assert_eq!(left["type"], "ok", "{left}");
    let ok = reader
        .request(json!({"type": "join", "room": "bomb", "since": 0}))
        .await;
    assert_eq!(
        (ok["type"].clone(), ok["recovered"].clone()),
        (json!("ok"), json!(true)),
        "{ok}"
    );
    let mut replayed = Vec::new();
    while replayed.len() < 500 {
        replayed.push(reader.next_msg().await["seq"].as_u64().expect("seq"));
    }
    assert_eq!(
        replayed,
        (1..=500).collect::<Vec<u64>>(),
        "in order, none twice"
    );
    let pong = reader.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "ok", "the reader is still connected: {pong}");

    let peak = sampler.peak();
    let grew = peak.saturating_sub(base);
    eprintln!(
        "history bomb: {pages} pages + a 32 MB replay; gateway RSS {} MiB -> peak {} MiB (+{} MiB, bound {} MiB)",
        base >> 20,
        peak >> 20,
        grew >> 20,
        BOMB_RSS_BOUND >> 20
    );
    assert!(
        grew < BOMB_RSS_BOUND,
        "RSS grew by {grew} bytes (bound {BOMB_RSS_BOUND})"
    );
}

/// A raw WebSocket client whose socket has a tiny receive buffer, so that a gateway
/// writing to it blocks as soon as it stops reading.
async fn small_window_client(
    gw: &TestGateway,
    user: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(gw.gateway.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(gw.ws_url(&format!("user={user}")), stream)
        .await
        .expect("upgrade");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_within_two_heartbeats() {
    let heartbeat = Duration::from_millis(500);
    let mut c = test_config();
    c.heartbeat.interval = heartbeat;
    // Nothing else may close it first: a queue far larger than what is sent.
    c.limits.outbound_queue_bytes = 256 << 20;
    c.limits.message_rate = 1000.0;
    c.limits.user_message_rate = 0.0;
    c.limits.message_burst = 1000;
    let gw = TestGateway::start(c).await;
    let mut stalled = small_window_client(&gw, "stalled").await;
    stalled
        .send(Message::text(
            json!({"type": "join", "id": 1, "room": "r"}).to_string(),
        ))
        .await
        .expect("join");
    // Read up to the join's reply, then never read again.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"ref\":1") => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no join reply: {other:?}"),
        }
    }
    // It keeps sending (so the idle check sees a live client) but reads nothing.
    let (mut tx, rx) = stalled.split();
    let keep_sending = tokio::spawn(async move {
        for i in 2.. {
            let ping = json!({"type": "ping", "id": i}).to_string();
            if tx.send(Message::text(ping)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut flood = gw.connect("flood").await;
    flood.join("r").await;
    for i in 0..200 {
        let r = flood
            .send("r", json!({"n": i, "pad": "x".repeat(60_000)}))
            .await;
        assert_eq!(r["type"], "ok", "{r}");
    }
    let flooded = Instant::now();
    let closed = "chatgateway_connections_closed_total{reason=\"write timeout\"}";
    // The series appears with the first close of that reason.
    while gw.sample(closed).await.unwrap_or(0.0) < 1.0 {
        assert!(
            flooded.elapsed() < heartbeat * 2 + Duration::from_secs(3),
            "the stalled reader is still open {:?} after the flood",
            flooded.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "stalled reader closed {:?} after the flood",
        flooded.elapsed()
    );
    // Its socket is closed: what is buffered can still be read, then it ends.
    keep_sending.abort();
    let mut rx = rx;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(m)) = rx.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled client's socket was not closed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_receives_the_dms_no_device_acknowledged() {
    let gw = TestGateway::default().await;
    let mut phone = gw.connect("bob").await;
    phone.request(json!({"type": "ping"})).await;
    let mut alice = gw.connect("alice").await;
    let sent = alice.send("user:bob", json!("d1")).await;
    assert_eq!(sent["type"], "ok", "{sent}");
    // It reaches the phone's socket; the phone does not acknowledge it.
    assert_eq!(phone.next_msg().await["body"], "d1");
    let mut laptop = gw.connect("bob").await;
    laptop.request(json!({"type": "ping"})).await;
    let got = laptop.drain_msgs(Duration::from_millis(500)).await;
    assert_eq!(
        got.iter().map(|m| m["body"].clone()).collect::<Vec<_>>(),
        [json!("d1")],
        "the laptop gets what the phone merely received"
    );
    // Once the phone acknowledges it, a new device starts after it.
    let ack = phone
        .request(json!({"type": "ack", "seq": sent["seq"]}))
        .await;
    assert_eq!(ack["type"], "ok", "{ack}");
    let mut tablet = gw.connect("bob").await;
    tablet.request(json!({"type": "ping"})).await;
    assert!(tablet
        .drain_msgs(Duration::from_millis(500))
        .await
        .is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_built_to_break_the_payload_reaches_no_client() {
    let redis = RedisServer::start();
    let gws = Gateways::start(&redis, 2, &[]);
    let urls = gws.urls();
    let mut alice = Client::connect(&format!("{}?user=alice", urls[0]))
        .await
        .expect("alice");
    let mut bob = Client::connect(&format!("{}?user=bob", urls[1]))
        .await
        .expect("bob");
    alice.join("r").await;
    bob.join("r").await;
    // A space ends the traceparent field of `m <seq> <epoch> <ts> <tp> <frame>`: what
    // follows would be taken for the frame every member receives.
    let forged = r#"{"type":"msg","room":"r","seq":99,"epoch":"x","ts":1,"msg_id":"f","from":"admin","body":"forged"}"#;
    let evil = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 {forged}");
    let r = alice
        .request(json!({"type": "send", "room": "r", "body": "hello", "traceparent": evil}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    alice.send("r", json!("second")).await;
    let got = bob.drain_msgs(Duration::from_millis(800)).await;
    let bodies: Vec<Value> = got.iter().map(|m| m["body"].clone()).collect();
    assert_eq!(bodies, [json!("hello"), json!("second")], "{got:?}");
    assert!(
        got.iter().all(|m| m.get("traceparent").is_none()),
        "{got:?}"
    );
    assert!(got.iter().all(|m| m["from"] == "alice"));
}

/// A WebSocket upstream recording the path and headers of each upgrade; with `delay` it
/// answers the handshake that late (a dial in progress).
/// What an [`upstream`] saw: each handshake's path and headers, and how many TCP
/// connections it accepted (a dial under way before its handshake is answered).
type Handshakes = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

async fn upstream(delay: Duration) -> (String, Handshakes, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicU64::new(0));
    let (log, count) = (seen.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let log = log.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                #[allow(clippy::result_large_err)]
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp| {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((req.uri().to_string(), headers));
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen, accepted)
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_paths_stay_under_the_route_and_values_stay_in_their_lane() {
    let (up, seen, _) = upstream(Duration::ZERO).await;
    let mut c = test_config();
    c.routes = vec![RouteConfig {
        name: "bots".into(),
        path_prefix: "/bots".into(),
        upstream: format!("ws://{up}/public"),
        strip_prefix: true,
        idle_timeout: Duration::from_millis(400),
        ..Default::default()
    }];
    let gw = TestGateway::start(c).await;
    let addr = gw.gateway.addr;
    for bad in [
        "/bots/%2e%2e/%2e%2e/admin",
        "/bots/../admin",
        "/bots/a%2f..%2f..%2fadmin",
    ] {
        let (status, _) = http_request(addr, &upgrade_request(&format!("{bad}?user=x"), "")).await;
        assert_eq!(status, 400, "{bad}");
    }
    assert!(seen.lock().expect("seen").is_empty(), "nothing was dialled");

    // A user id that is no header value is encoded, not dropped; a traceparent that is not
    // one is not passed on.
    let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 x\r\n";
    let (status, _) =
        http_request(addr, &upgrade_request("/bots/x/./y?user=zo%C3%AB%20a", tp)).await;
    assert_eq!(status, 101);
    let (path, headers) = seen.lock().expect("seen")[0].clone();
    assert_eq!(path, "/public/x/y");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-chat-user").as_deref(), Some("zo%C3%AB%20a"));
    assert_eq!(header("traceparent"), None);

    // A forwarded connection idle in both directions is closed. Timed from before the
    // connect: the gateway's idle timer starts before the client sees the upgrade, and on
    // a slow machine that can be a good part of the timeout.
    let started = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/bots/z?user=idle"))
        .await
        .expect("forwarded");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) => continue,
            other => panic!("not closed for idleness: {other:?}"),
        }
    };
    let close = close.expect("close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1001, "idle timeout")
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_connection_cap_counts_dials_in_progress() {
    let (up, _, accepted) = upstream(Duration::from_millis(1500)).await;
    let mut c = test_config();
    c.routes = vec![RouteConfig {
        name: "slow".into(),
        path_prefix: "/slow".into(),
        upstream: up,
        max_connections: 1,
        connect_timeout: Duration::from_secs(5),
        retries: 0,
        ..Default::default()
    }];
    let gw = TestGateway::start(c).await;
    let addr = gw.gateway.addr;
    let first = tokio::spawn(async move {
        http_request(addr, &upgrade_request("/slow/a?user=one", ""))
            .await
            .0
    });
    // The first dial is under way once the upstream accepted it: its handshake is then
    // answered 1.5 s later, the time the second has to be refused in.
    let dialled = || accepted.load(Ordering::SeqCst) == 1;
    e2e::fleet::wait_until("the first dial", Duration::from_secs(10), dialled).await;
    let (second, _) = http_request(addr, &upgrade_request("/slow/b?user=two", "")).await;
    assert_eq!(second, 503, "the dial in progress holds the only slot");
    assert_eq!(first.await.expect("first"), 101);
    gw.stop().await;
}
