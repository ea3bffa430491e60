//! Protocol v1 over real sockets against an in-process gateway (memory engine).

use e2e::fleet::wait_until;
use e2e::presence::{assert_storm_batched, join_storm};
use e2e::{test_config, TestGateway};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_in_a_room() {
    let gw = TestGateway::default().await;
    let mut alice = gw.connect("alice").await;
    let mut bob = gw.connect("bob").await;
    assert_eq!(alice.welcome["user"], "alice");
    assert_eq!(alice.welcome["node"], "test-node");
    assert_eq!(alice.welcome["protocol"], 1);
    alice.join("lobby").await;
    bob.join("lobby").await;
    let ack = alice.send("lobby", json!({"text": "hi bob"})).await;
    assert_eq!(ack["type"], "ok", "{ack}");
    assert_eq!(ack["seq"], 1);
    let m = bob.next_msg().await;
    assert_eq!(
        (m["room"].as_str(), m["from"].as_str()),
        (Some("lobby"), Some("alice"))
    );
    assert_eq!(m["body"]["text"], "hi bob");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["epoch"], ack["epoch"]);
    let reply = bob.send("lobby", json!("hello")).await;
    assert_eq!(reply["seq"], 2);
    let mine = alice.next_msg().await; // alice sees her own message too
    assert_eq!(mine["seq"], 1);
    assert_eq!(alice.next_msg().await["body"], "hello");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_gets_exactly_one_reply() {
    let gw = TestGateway::default().await;
    let mut c = gw.connect("carol").await;
    let mut other = gw.connect("dan").await;
    other.join("r").await;
    let token = other.resume_token();
    let cmds = [
        json!({"type": "ping"}),
        json!({"type": "join", "room": "r"}),
        json!({"type": "join", "room": "r"}), // already joined -> error
        json!({"type": "send", "room": "r", "body": 1}),
        json!({"type": "send", "room": "nope", "body": 1}), // not joined -> error
        json!({"type": "send", "room": "user:dan", "body": "dm"}),
        json!({"type": "history", "room": "r"}),
        json!({"type": "presence", "room": "r"}),
        json!({"type": "join", "room": "r2", "since": 0}),
        json!({"type": "leave", "room": "r"}),
        json!({"type": "leave", "room": "r"}),
        json!({"type": "resume", "resume_token": token}), // another user's -> error
        json!({"type": "resume", "resume_token": "0123"}), // unknown -> error
    ];
    let mut ids = Vec::new();
    for cmd in cmds {
        ids.push(c.send_cmd(cmd).await);
    }
    // Read everything the commands caused (the replies, the message, presence).
    let frames = c.frames_for(Duration::from_millis(500)).await;
    let mut kinds = Vec::new();
    for id in &ids {
        let replies: Vec<&Value> = frames.iter().filter(|f| f["ref"] == json!(id)).collect();
        assert_eq!(replies.len(), 1, "command {id}: {replies:?}");
        kinds.push(replies[0]["type"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(
        kinds,
        [
            "ok", "ok", "error", "ok", "error", "ok", "ok", "ok", "ok", "ok", "error", "error",
            "error"
        ]
    );
    let refs = frames.iter().filter(|f| !f["ref"].is_null()).count();
    assert_eq!(refs, ids.len(), "nothing else carries a ref: {frames:?}");
    // The replies came in command order (one queue, one writer).
    let order: Vec<u64> = frames.iter().filter_map(|f| f["ref"].as_u64()).collect();
    assert_eq!(order, ids);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_order_by_seq_under_concurrent_senders() {
    let mut config = test_config();
    config.limits.message_rate = 10_000.0;
    config.limits.user_message_rate = 0.0;
    config.limits.message_burst = 10_000;
    let gw = TestGateway::start(config).await;
    let mut watcher = gw.connect("watcher").await;
    watcher.join("busy").await;
    let mut tasks = Vec::new();
    for s in 0..8 {
        let mut c = gw.connect(&format!("sender{s}")).await;
        c.join("busy").await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let r = c.send("busy", json!({"s": s, "i": i})).await;
                assert_eq!(r["type"], "ok", "{r}");
                acked.push(r["seq"].as_u64().expect("seq"));
            }
            // Each sender's own acks increase.
            assert!(acked.windows(2).all(|w| w[0] < w[1]), "{acked:?}");
            acked
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        all.extend(t.await.expect("sender"));
    }
    assert_eq!(all, (1..=200).collect::<BTreeSet<u64>>());
    let mut got = Vec::new();
    while got.len() < 200 {
        got.push(watcher.next_msg().await);
    }
    assert_eq!(
        seqs(&got),
        (1..=200).collect::<Vec<u64>>(),
        "delivered in seq order"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_send_is_deduplicated() {
    let gw = TestGateway::default().await;
    let mut a = gw.connect("alice").await;
    let mut b = gw.connect("bob").await;
    a.join("r").await;
    b.join("r").await;
    let send = json!({"type": "send", "room": "r", "msg_id": "retry-1", "body": "once"});
    let first = a.request(send.clone()).await;
    let again = a.request(send).await;
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(again["duplicate"], true);
    assert_eq!(first.get("duplicate"), None);
    let next = a.send("r", json!("after")).await;
    let got = b.drain_msgs(Duration::from_millis(400)).await;
    assert_eq!(
        seqs(&got),
        [
            first["seq"].as_u64().unwrap_or(0),
            next["seq"].as_u64().unwrap_or(0)
        ]
    );
    assert_eq!(got[0]["msg_id"], "retry-1");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_paging() {
    let mut config = test_config();
    config.limits.message_rate = 1000.0;
    config.limits.user_message_rate = 0.0;
    let gw = TestGateway::start(config).await;
    let mut a = gw.connect("alice").await;
    a.join("h").await;
    for i in 1..=12 {
        a.send("h", json!(i)).await;
    }
    let page = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["seq"].as_u64().unwrap_or(0))
            .collect()
    };
    let latest = a
        .request(json!({"type": "history", "room": "h", "limit": 5}))
        .await;
    assert_eq!(page(&latest), [8, 9, 10, 11, 12]);
    assert_eq!(
        (latest["top"].as_u64(), latest["first"].as_u64()),
        (Some(12), Some(1))
    );
    let older = a
        .request(json!({"type": "history", "room": "h", "before": 8, "limit": 5}))
        .await;
    assert_eq!(page(&older), [3, 4, 5, 6, 7]);
    let oldest = a
        .request(json!({"type": "history", "room": "h", "before": 3, "limit": 5}))
        .await;
    assert_eq!(page(&oldest), [1, 2]);
    let forward = a
        .request(json!({"type": "history", "room": "h", "since": 10}))
        .await;
    assert_eq!(page(&forward), [11, 12]);
    assert_eq!(forward["messages"][0]["type"], "msg");
    assert_eq!(forward["messages"][0]["body"], 11);
    gw.stop().await;
}

fn users(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|u| u.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_join_and_leave() {
    let gw = TestGateway::default().await;
    let mut a = gw.connect("alice").await;
    a.join("p").await;
    let mut b = gw.connect("bob").await;
    b.join("p").await;
    // Both joins are announced (in one frame or two: the node batches a window's worth).
    let mut seen = BTreeSet::new();
    a.presence_until("p", &mut seen, &users(&["alice", "bob"]))
        .await;
    let list = a.request(json!({"type": "presence", "room": "p"})).await;
    assert_eq!(list["users"], json!(["alice", "bob"]));
    assert_eq!(list["count"], 2);
    b.request(json!({"type": "leave", "room": "p"})).await;
    // The leave comes after the linger, in a window of its own.
    assert_eq!(
        a.next_of("presence").await,
        json!({"type": "presence", "room": "p", "joined": [], "left": ["bob"]})
    );
    // A dropped socket also leaves.
    let mut c = gw.connect("carol").await;
    c.join("p").await;
    let mut seen = users(&["alice"]);
    a.presence_until("p", &mut seen, &users(&["alice", "carol"]))
        .await;
    c.kill();
    a.presence_until("p", &mut seen, &users(&["alice"])).await;
    let list = a.request(json!({"type": "presence", "room": "p"})).await;
    assert_eq!(list["users"], json!(["alice"]));
    gw.stop().await;
}

/// A `presence` reply lists at most `limits.presenceUsers` users and counts all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_reply_lists_at_most_presence_users_and_counts_all() {
    let mut config = test_config();
    config.limits.presence_users = 2;
    let gw = TestGateway::start(config).await;
    let mut members = Vec::new();
    for user in ["ann", "bob", "cid"] {
        let mut c = gw.connect(user).await;
        c.join("p").await;
        members.push(c);
    }
    let list = members[2]
        .request(json!({"type": "presence", "room": "p"}))
        .await;
    // The memory engine lists the first users by name.
    assert_eq!(
        (&list["users"], &list["count"]),
        (&json!(["ann", "bob"]), &json!(3))
    );
    gw.stop().await;
}

/// Issue 23: N members joining one room cost each member a few presence frames, not one
/// per join (N²/2 in all), and each still learns who is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_costs_each_member_a_few_presence_frames() {
    const N: usize = 60;
    let mut config = test_config();
    // Longer than the storm takes on any machine (its joins are sent back to back).
    config.limits.presence_batch = Duration::from_secs(1);
    let gw = TestGateway::start(config).await;
    let mut members = Vec::new();
    for i in 0..N {
        members.push(gw.connect(&format!("u{i:02}")).await);
    }
    let mut last = gw.connect("last").await;
    let frames = join_storm(&mut members, &mut last, "storm").await;
    assert_storm_batched(&frames, N);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_dropped_socket_returns_exactly_the_missed_messages() {
    let mut config = test_config();
    config.limits.message_rate = 1000.0;
    config.limits.user_message_rate = 0.0;
    let gw = TestGateway::start(config).await;
    let mut sender = gw.connect("sender").await;
    sender.join("room1").await;
    sender.join("room2").await;
    let mut r = gw.connect("reader").await;
    r.join("room1").await;
    r.join("room2").await;
    for i in 1..=3 {
        sender.send("room1", json!(i)).await;
    }
    let seen = r.drain_msgs(Duration::from_millis(300)).await;
    assert_eq!(seqs(&seen), [1, 2, 3]);
    let token = r.resume_token();
    r.kill();
    // Gone from the node only after its session is saved: a resume before that could be
    // followed by the old connection's save, and the token resumed twice below.
    wait_until(
        "the reader's connection closed",
        Duration::from_secs(10),
        || gw.gateway.node.connection_count() == 1,
    )
    .await;
    for i in 4..=7 {
        sender.send("room1", json!(i)).await;
    }
    sender.send("room2", json!("r2")).await;

    let mut r = gw.connect("reader").await;
    let id = r
        .send_cmd(json!({"type": "resume", "resume_token": token, "positions": {"room1": 3}}))
        .await;
    let reply = r.reply(id).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["rooms"]["room1"]["recovered"], true);
    assert_eq!(
        reply["rooms"]["room2"]["recovered"], true,
        "room2 comes from the stored session"
    );
    // Live traffic continues after the replay, without gap or duplicate.
    sender.send("room1", json!(8)).await;
    let got = r.drain_msgs(Duration::from_millis(500)).await;
    let room1: Vec<u64> = got
        .iter()
        .filter(|m| m["room"] == "room1")
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    let room2: Vec<u64> = got
        .iter()
        .filter(|m| m["room"] == "room2")
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(room1, [4, 5, 6, 7, 8]);
    assert_eq!(room2, [1]);
    // The token was used: it cannot be replayed.
    let mut again = gw.connect("reader").await;
    let reply = again
        .request(json!({"type": "resume", "resume_token": token}))
        .await;
    assert_eq!(reply["code"], "session_not_found");
    // Someone else's token is refused.
    let other = gw.connect("mallory").await;
    let reply = {
        let mut other = other;
        other
            .request(json!({"type": "resume", "resume_token": r.resume_token()}))
            .await
    };
    assert_eq!(reply["code"], "forbidden", "a token of another user");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_retention_or_epoch_says_not_recovered() {
    let mut config = test_config();
    config.limits.message_rate = 1000.0;
    config.limits.user_message_rate = 0.0;
    config.history.max_messages = 5;
    let gw = TestGateway::start(config).await;
    let mut s = gw.connect("s").await;
    s.join("short").await;
    let mut r = gw.connect("r").await;
    r.join("short").await;
    s.send("short", json!(1)).await;
    let token = r.resume_token();
    r.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 2..=10 {
        s.send("short", json!(i)).await; // seq 2..=5 fall out of a 5-message history
    }
    let mut r = gw.connect("r").await;
    let reply = r
        .request(json!({"type": "resume", "resume_token": token, "positions": {"short": 1}}))
        .await;
    assert_eq!(reply["rooms"]["short"]["recovered"], false, "{reply}");
    assert_eq!(reply["rooms"]["short"]["seq"], 10);
    // No partial replay; live messages continue from the current top.
    s.send("short", json!(11)).await;
    let got = r.drain_msgs(Duration::from_millis(400)).await;
    assert_eq!(seqs(&got), [11]);
    // A wrong epoch is never "recovered".
    let mut q = gw.connect("q").await;
    let reply = q
        .request(json!({"type": "join", "room": "short", "since": 9, "epoch": "not-the-epoch"}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let reply = q.request(json!({"type": "leave", "room": "short"})).await;
    assert_eq!(reply["type"], "ok");
    let ep = reply_epoch(&mut s).await;
    let reply = q
        .request(json!({"type": "join", "room": "short", "since": 9, "epoch": ep}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(
        seqs(&q.drain_msgs(Duration::from_millis(300)).await),
        [10, 11]
    );
    gw.stop().await;
}

async fn reply_epoch(c: &mut e2e::Client) -> String {
    let h = c
        .request(json!({"type": "history", "room": "short", "limit": 1}))
        .await;
    h["epoch"].as_str().expect("epoch").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints() {
    let gw = TestGateway::default().await;
    let addr = gw.gateway.addr;
    assert_eq!(e2e::http_get(addr, "/healthz").await.0, 200);
    assert_eq!(e2e::http_get(addr, "/readyz").await.0, 200);
    let (status, body) = e2e::http_get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("chatgateway"));
    assert_eq!(e2e::http_get(addr, "/nope").await.0, 404);
    let (status, body) = e2e::http_get(addr, "/ws").await;
    assert_eq!(status, 400, "plain GET on /ws is not an upgrade: {body}");
    let _c = gw.connect("m").await;
    assert_eq!(gw.metric("chatgateway_connections").await, 1.0);
    gw.stop().await;
}

/// RFC 6455 upgrades HTTP/1.1: an HTTP/1.0 upgrade request is refused with a reason, not
/// answered 101 and closed (hyper upgrades nothing older).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_over_http_1_0_is_refused_with_a_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::default().await;
    let mut sock = tokio::net::TcpStream::connect(gw.gateway.addr)
        .await
        .expect("connect");
    let request = "GET /ws?user=old HTTP/1.0\r\nHost: t\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n";
    sock.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut answer));
    read.await.expect("answered in time").expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(answer.contains("needs HTTP/1.1"), "{answer}");
}

/// A client may send its first command in the same packet as its upgrade request: the
/// bytes the HTTP parser read past the request are the start of the WebSocket stream
/// (the gateway takes the socket back from hyper, with what hyper read ahead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_with_the_upgrade_request_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::default().await;
    let addr = gw.gateway.addr;
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut packet = format!(
        "GET /ws?user=early HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chatgw.v1\r\n\r\n"
    )
    .into_bytes();
    // One masked text frame (a client's frames are masked), right behind the request.
    let command = br#"{"type":"ping","id":7}"#;
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    packet.extend([0x81, 0x80 | command.len() as u8]);
    packet.extend(mask);
    packet.extend(command.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    sock.write_all(&packet).await.expect("write");
    // The 101, the welcome, then the reply to id 7 (`"ref":7`) (server frames are not masked).
    let mut seen = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&seen).contains(r#""ref":7"#) {
                return true;
            }
        }
    })
    .await;
    assert_eq!(
        answered,
        Ok(true),
        "no reply to the command sent with the upgrade; got: {}",
        String::from_utf8_lossy(&seen)
    );
}
