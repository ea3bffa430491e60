//! A connection's token expires on time even while its commands queue up behind a slow
//! delivery. The socket loop looked at the token's deadline (and the node's messages: a
//! removed key, a server unsubscribe) only once no command was waiting, so a client that
//! read its replies slowly and sent one more command per reply kept an expired token's
//! connection open for good.

use chat_gateway::config::AuthMode;
use e2e::{jwt, test_config, TestGateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "expiry-backlog-test-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expires_while_its_commands_wait_behind_a_slow_delivery() {
    let mut c = test_config();
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    c.auth.jwt.leeway = Duration::ZERO;
    c.limits.message_rate = 1000.0;
    c.limits.message_burst = 1000;
    c.limits.user_message_rate = 0.0;
    c.limits.outbound_queue_bytes = 300_000;
    let gw = TestGateway::start(c).await;
    let url = |token: String| format!("ws://{}/ws?token={token}", gw.gateway.addr);

    // A room of about 1 MB: each history reply is a page of up to 256 KiB.
    let (mut publisher, _) = tokio_tungstenite::connect_async(url(jwt::hs256(SECRET, "pub", 300)))
        .await
        .expect("publisher");
    let command = |v: serde_json::Value| Message::text(v.to_string());
    publisher
        .send(command(json!({"type": "join", "id": 0, "room": "big"})))
        .await
        .expect("join");
    let body = "x".repeat(10_000);
    for i in 1..=100 {
        let send = json!({"type": "send", "id": i, "room": "big", "body": body});
        publisher.send(command(send)).await.expect("send");
    }
    let mut acked = 0;
    while acked < 101 {
        match tokio::time::timeout(Duration::from_secs(10), publisher.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"type\":\"ok\"") => acked += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("publishing: {other:?}"),
        }
    }

    let ttl = 3;
    let (mut ws, _) = tokio_tungstenite::connect_async(url(jwt::hs256(SECRET, "eve", ttl)))
        .await
        .expect("eve");
    let started = Instant::now();
    ws.send(command(json!({"type": "join", "id": 0, "room": "big"})))
        .await
        .expect("join");
    let history =
        |id: u64| command(json!({"type": "history", "id": id, "room": "big", "limit": 100}));
    // Far more than the backlog holds (32) or the socket buffers absorb.
    for id in 1..=300 {
        ws.send(history(id)).await.expect("history");
    }
    // Read slowly; one more command per frame read keeps commands waiting.
    let mut id = 301;
    // Closed at the expiry: a close frame, or a reset when the client still had replies
    // unread (the gateway stops reading a closed connection after a second).
    let closed = loop {
        if started.elapsed() > Duration::from_secs(ttl as u64 + 8) {
            break false;
        }
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4401));
                break true;
            }
            Ok(Some(Ok(Message::Text(_)))) => {
                let _ = ws.send(history(id)).await;
                id += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => break true,
            Err(_) => panic!("no frame for 5 s"),
        }
    };
    assert!(
        closed,
        "still open {:?} after the token expired",
        started.elapsed()
    );
    // Counted by the connection's task after its close frame went out.
    let expired = gw
        .wait_sample(
            "chatgateway_connections_closed_total{reason=\"token expired\"}",
            1.0,
        )
        .await;
    assert_eq!(expired, 1.0, "closed because the token expired");
    gw.stop().await;
}
