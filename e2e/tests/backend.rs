//! The application's backend in the loop: the server API (across real gateway processes
//! sharing a real Redis) and the hooks, answered by a real backend process
//! (`chat-backend`, the worked example of docs/backend.md).

use chat_gateway::config::HookConfig;
use e2e::gateways::Gateways;
use e2e::process::free_port;
use e2e::redis::RedisServer;
use e2e::{http_request, Client};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "backend/hooks.rs"]
mod hooks;

const KEY: &str = "backend-test-key";

/// One API request over a plain socket: (status, JSON body).
async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http_request(addr, &request).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The backend process; killed on drop.
struct Backend {
    child: Child,
    addr: SocketAddr,
}

impl Backend {
    fn start(slow_ms: u64) -> Backend {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_chat-backend"))
            .args([
                "--listen",
                &addr.to_string(),
                "--slow-ms",
                &slow_ms.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("chat-backend starts");
        let backend = Backend { child, addr };
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return backend;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("chat-backend did not listen on {addr}");
    }

    fn hook(&self, path: &str) -> HookConfig {
        HookConfig {
            url: format!("http://{}{path}", self.addr),
            ..Default::default()
        }
    }

    async fn events(&self) -> Vec<Value> {
        let (_, body) = api(self.addr, "GET", "/events", None, None).await;
        body["events"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two gateway processes on one Redis, each with its server API on a port of its own.
fn two_with_api(redis: &RedisServer) -> (Gateways, Vec<SocketAddr>) {
    let ports: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut gws = Gateways::start(redis, 0, &[]);
    let keys = format!("[{KEY}]");
    for (i, api_addr) in ports.iter().enumerate() {
        let listen = api_addr.to_string();
        let public = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let extra = [
            ("CHATGW_API__LISTEN", listen.as_str()),
            ("CHATGW_API__KEYS", keys.as_str()),
        ];
        gws.restart_with(public, i, &extra);
    }
    (gws, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publish_reaches_clients_on_another_process_in_order_once_per_msg_id() {
    let redis = RedisServer::start();
    let (gws, apis) = two_with_api(&redis);
    let mut bob = Client::connect(&gws.procs[1].ws_url("user=bob"))
        .await
        .expect("bob");
    bob.join("news").await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        let (status, r) = api(
            apis[0],
            "POST",
            "/api/v1/publish",
            Some(KEY),
            Some(json!({"room": "news", "body": {"n": i}, "msg_id": format!("n{i}")})),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        seqs.push(r["seq"].as_u64().expect("seq"));
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive seqs: {seqs:?}"
    );
    // The same msg_id again: the original seq, nothing delivered twice.
    let (_, again) = api(
        apis[1],
        "POST",
        "/api/v1/publish",
        Some(KEY),
        Some(json!({"room": "news", "body": {"n": 0}, "msg_id": "n0"})),
    )
    .await;
    assert_eq!(
        (again["seq"].as_u64(), again["duplicate"].clone()),
        (Some(seqs[0]), json!(true))
    );
    let got: Vec<Value> = bob.drain_msgs(Duration::from_millis(500)).await;
    let bodies: Vec<Value> = got.iter().map(|m| m["body"]["n"].clone()).collect();
    assert_eq!(
        bodies,
        (0..5).map(|i| json!(i)).collect::<Vec<_>>(),
        "in seq order, once each"
    );
    assert!(
        got.iter().all(|m| m["from"] == "system"),
        "api.defaultSender"
    );
    // An inbox, and a broadcast.
    let (_, dm) = api(
        apis[0],
        "POST",
        "/api/v1/publish",
        Some(KEY),
        Some(json!({"room": "user:bob", "body": "from the backend", "from": "billing"})),
    )
    .await;
    assert!(dm["seq"].as_u64().is_some(), "{dm}");
    let m = bob.next_msg().await;
    assert_eq!(
        (m["room"].clone(), m["from"].clone()),
        (json!("user:bob"), json!("billing"))
    );
    let (_, b) = api(
        apis[1],
        "POST",
        "/api/v1/broadcast",
        Some(KEY),
        Some(
            json!({"rooms": ["news", "other", "bad room", "user:"], "body": "all", "msg_id": "b1"}),
        ),
    )
    .await;
    let results = b["results"].as_array().expect("results");
    assert_eq!(results.len(), 4);
    assert_eq!(results[2]["error"], "bad_request", "{b}");
    assert_eq!(results[3]["error"], "bad_request", "no user's inbox: {b}");
    assert_eq!(bob.next_msg().await["body"], "all");
    // Read side.
    let (_, h) = api(
        apis[1],
        "GET",
        "/api/v1/history?room=news&limit=3",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(3), "{h}");
    let (_, p) = api(
        apis[0],
        "GET",
        "/api/v1/presence?room=news",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!((&p["users"], &p["count"]), (&json!(["bob"]), &json!(1)));
    // A listing holds at most `limit` users; `count` is of all of them.
    let mut carol = Client::connect(&gws.procs[0].ws_url("user=carol"))
        .await
        .expect("carol");
    carol.join("news").await;
    let presence = |query: &'static str| api(apis[0], "GET", query, Some(KEY), None);
    let (_, all) = presence("/api/v1/presence?room=news").await;
    assert_eq!(
        (&all["users"], &all["count"]),
        (&json!(["bob", "carol"]), &json!(2))
    );
    let (_, one) = presence("/api/v1/presence?room=news&limit=1").await;
    assert_eq!(
        (one["users"].as_array().map(Vec::len), &one["count"]),
        (Some(1), &json!(2)),
        "{one}"
    );
    let (status, bad) = presence("/api/v1/presence?room=news&limit=all").await;
    assert_eq!((status, &bad["error"]), (400, &json!("bad_request")));
    let (_, rooms) = api(apis[0], "GET", "/api/v1/rooms", Some(KEY), None).await;
    assert!(
        rooms["rooms"]
            .as_array()
            .is_some_and(|r| r.contains(&json!({"room": "news", "users": 2}))),
        "{rooms}"
    );
    // Nodes report every 2 s: bob's and carol's connections show up within a few reports.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, nodes) = api(apis[0], "GET", "/api/v1/nodes", Some(KEY), None).await;
        let list = nodes["nodes"].as_array().cloned().unwrap_or_default();
        let total: u64 = list.iter().filter_map(|n| n["connections"].as_u64()).sum();
        if list.len() == 2 && total == 2 {
            break;
        }
        assert!(Instant::now() < until, "{nodes}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_a_key_and_is_not_on_the_public_port() {
    let redis = RedisServer::start();
    let (gws, apis) = two_with_api(&redis);
    let publish = Some(json!({"room": "news", "body": 1}));
    assert_eq!(
        api(apis[0], "POST", "/api/v1/publish", None, publish.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        api(
            apis[0],
            "POST",
            "/api/v1/publish",
            Some("wrong"),
            publish.clone()
        )
        .await
        .0,
        401
    );
    assert_eq!(
        api(apis[0], "GET", "/api/v1/nodes", Some("wrong"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        api(
            gws.procs[0].addr,
            "POST",
            "/api/v1/publish",
            Some(KEY),
            publish
        )
        .await
        .0,
        404
    );
    let (status, doc) = api(apis[0], "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!((status, doc["openapi"].clone()), (200, json!("3.0.3")));
    let (status, err) = api(
        apis[0],
        "POST",
        "/api/v1/publish",
        Some(KEY),
        Some(json!({"room": "x"})),
    )
    .await;
    assert_eq!(
        (status, err["error"].clone()),
        (400, json!("bad_request")),
        "{err}"
    );
    // Errors are JSON on every path of the API, a wrong one or a wrong method too.
    for (method, path, want) in [
        ("GET", "/api/v1/nope", (404, "not_found")),
        ("GET", "/api/v1/publish", (405, "method_not_allowed")),
    ] {
        let (status, err) = api(apis[0], method, path, Some(KEY), None).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (want.0, Some(want.1)),
            "{path}"
        );
    }
    // A body that cannot be read (a chunk size that is not hex) is a bad request, not
    // one too large.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(apis[0])
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {KEY}\r\n\
         Transfer-Encoding: chunked\r\n\r\nzz\r\n"
    );
    raw.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_unsubscribe_reach_the_user_on_every_process() {
    let redis = RedisServer::start();
    let (gws, apis) = two_with_api(&redis);
    let url = |i: usize, u: &str| gws.procs[i].ws_url(&format!("user={u}"));
    let mut on_a = Client::connect(&url(0, "alice")).await.expect("a");
    let mut on_b = Client::connect(&url(1, "alice")).await.expect("b");
    let mut bob = Client::connect(&url(1, "bob")).await.expect("bob");
    on_a.join("r").await;
    on_b.join("r").await;
    bob.join("r").await;
    let (status, _) = api(
        apis[0],
        "POST",
        "/api/v1/unsubscribe",
        Some(KEY),
        Some(json!({"user": "alice", "room": "r"})),
    )
    .await;
    assert_eq!(status, 200);
    for c in [&mut on_a, &mut on_b] {
        let u = c.next_of("unsubscribed").await;
        assert_eq!(u["room"], "r");
        let sent = c
            .request(json!({"type": "send", "room": "r", "body": 1}))
            .await;
        assert_eq!(sent["code"], "not_joined");
    }
    let (status, _) = api(
        apis[1],
        "POST",
        "/api/v1/disconnect",
        Some(KEY),
        Some(json!({"user": "alice", "reconnect": false, "reason": "banned"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(on_a.expect_close().await.map(|c| c.0), Some(4101));
    assert_eq!(on_b.expect_close().await.map(|c| c.0), Some(4101));
    assert_eq!(
        bob.send("r", json!("still here")).await["type"],
        "ok",
        "others stay"
    );
    let mut again = Client::connect(&url(0, "alice"))
        .await
        .expect("alice again");
    api(
        apis[0],
        "POST",
        "/api/v1/disconnect",
        Some(KEY),
        Some(json!({"user": "alice"})),
    )
    .await;
    assert_eq!(
        again.expect_close().await.map(|c| c.0),
        Some(4100),
        "reconnect allowed"
    );
    // A user no token can name is refused, not sent to every pod.
    for (path, body) in [
        ("/api/v1/disconnect", json!({"user": "x".repeat(129)})),
        ("/api/v1/disconnect", json!({"user": ""})),
        (
            "/api/v1/unsubscribe",
            json!({"user": "a\u{7}b", "room": "r"}),
        ),
    ] {
        let (status, err) = api(apis[0], "POST", path, Some(KEY), Some(body)).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (400, Some("bad_request")),
            "{path}: {err}"
        );
    }
}
