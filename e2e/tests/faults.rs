//! Faults under a real Redis (issue 18): a resume that fails half-way, a Redis restored
//! from an older snapshot, a Redis behind a black hole (a TCP proxy that stops forwarding
//! without a reset), and reads that must not create state. What the log says of a Redis
//! that fails: redis_log.rs.

use chat_gateway::config::{Config, EngineKind, NamespaceConfig};
use chat_gateway::engine::{Broker, Engine, History, HistoryQuery, Publish};
use chat_gateway::hub::Hub;
use chat_gateway::outbound::{Outbound, OutboundReceiver};
use e2e::blackhole::BlackHole;
use e2e::fleet::wait_until;
use e2e::gateways::Gateways;
use e2e::process::GatewayProcess;
use e2e::redis::RedisServer;
use e2e::{test_config, Client, TestGateway};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An in-process gateway on `redis` under a fresh key prefix, ready.
async fn gateway_on(redis: &RedisServer) -> TestGateway {
    gateway_with(gateway_config(redis)).await
}

fn gateway_config(redis: &RedisServer) -> Config {
    let mut c = test_config();
    c.engine = EngineKind::Redis;
    c.redis.url = redis.url();
    c.redis.key_prefix = format!("f{:08x}", rand::random::<u32>());
    c.limits.presence_linger = Duration::from_millis(200);
    c.limits.message_rate = 1000.0;
    c.limits.user_message_rate = 0.0;
    c.limits.message_burst = 1000;
    c
}

async fn gateway_with(c: Config) -> TestGateway {
    let gw = TestGateway::start(c).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.gateway.node.ready() {
        assert!(Instant::now() < deadline, "gateway never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw
}

fn bodies(msgs: &[Value]) -> Vec<Value> {
    msgs.iter().map(|m| m["body"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_fails_half_way_leaks_nothing() {
    let redis = RedisServer::start();
    let gw = gateway_on(&redis).await;
    let node = gw.gateway.node.clone();
    // The node's own subscriptions (the control room) stay.
    let own_rooms = node.hub.room_count();
    let mut a1 = gw.connect("alice").await;
    a1.join("lobby").await;
    let token = a1.resume_token();
    a1.kill();
    wait_until(
        "alice's first connection is gone",
        Duration::from_secs(10),
        || node.connection_count() == 0,
    )
    .await;
    let mut bob = gw.connect("bob").await;
    assert_eq!(bob.send("user:alice", json!("d1")).await["type"], "ok");

    // Redis refuses what an inbox catch-up needs (its scripts read streams), after the
    // stored session was taken: the resume fails half-way.
    redis
        .command(&["ACL", "SETUSER", "default", "-xrange", "-xrevrange"])
        .expect("deny");
    let mut a2 = gw.connect("alice").await;
    let reply = a2
        .request(json!({"type": "resume", "resume_token": token}))
        .await;
    redis
        .command(&["ACL", "SETUSER", "default", "+@all"])
        .expect("allow");
    assert_eq!(reply["type"], "ok", "{reply}");
    assert!(
        reply["rooms"]["user:alice"]["error"].is_string(),
        "the inbox could not be caught up, and says so: {reply}"
    );
    // Nothing stays held back: a DM sent now arrives at once.
    assert_eq!(bob.send("user:alice", json!("d2")).await["type"], "ok");
    let live = a2.next_msg().await;
    assert_eq!(live["body"], "d2", "{live}");
    // Nothing stays behind when alice goes: no subscription, no presence.
    a2.kill();
    wait_until(
        "alice's second connection is gone",
        Duration::from_secs(10),
        || node.connection_count() == 1,
    )
    .await;
    drop(bob);
    wait_until("every room unsubscribed", Duration::from_secs(10), || {
        node.connection_count() == 0 && node.hub.room_count() == own_rooms
    })
    .await;
    // Presence goes after its linger, from a task of its own.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !node
        .engine
        .presence("lobby")
        .await
        .expect("presence")
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence stayed behind in lobby"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing was acknowledged: alice's next device gets both DMs.
    let mut a3 = gw.connect("alice").await;
    a3.request(json!({"type": "ping"})).await;
    let got = a3.drain_msgs(Duration::from_millis(500)).await;
    assert_eq!(bodies(&got), [json!("d1"), json!("d2")]);
    gw.stop().await;
}

async fn connect_to(url: &str, user: &str) -> Client {
    Client::connect(&format!("{url}?user={user}"))
        .await
        .unwrap_or_else(|e| panic!("connect {user}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_older_snapshot_yields_a_new_epoch_and_drops_nothing() {
    let mut redis = RedisServer::start_with_snapshots();
    let mut gws = Gateways::start(&redis, 3, &[("CHATGW_REDIS__READINESS_GRACE", "1s")]);
    let urls = gws.urls();
    let mut alice = connect_to(&urls[0], "alice").await;
    let mut carol = connect_to(&urls[0], "carol").await;
    let mut bob = connect_to(&urls[1], "bob").await;
    let mut dave = connect_to(&urls[1], "dave").await;
    carol.request(json!({"type": "ping"})).await;
    alice.join("r").await;
    bob.join("r").await;
    for i in 1..=6 {
        if i == 4 {
            redis.snapshot(); // the backup the store will be restored from
        }
        assert_eq!(alice.send("r", json!(i)).await["type"], "ok");
        assert_eq!(dave.send("user:carol", json!(i)).await["type"], "ok");
    }
    let seen = bob.drain_msgs(Duration::from_millis(500)).await;
    assert_eq!(bodies(&seen).len(), 6);
    let old_epoch = seen[5]["epoch"].clone();
    let dms = carol.drain_msgs(Duration::from_millis(200)).await;
    assert_eq!(dms.len(), 6);
    let old_inbox_epoch = dms[5]["epoch"].clone();
    alice.drain_msgs(Duration::from_millis(100)).await;

    // The store comes back as of seq 3 of both streams; every process still runs.
    redis.stop();
    redis.start_again();
    for p in &gws.procs {
        p.wait_ready(200, Duration::from_secs(30));
    }
    // The first call may meet a connection the restart broke: resend with the msg id.
    let ack = send_retrying(&mut alice, "r", "after").await;
    assert_ne!(
        ack["epoch"], old_epoch,
        "a new epoch, not seq 4 of the old one"
    );
    for (who, c) in [("bob", &mut bob), ("alice", &mut alice)] {
        let m = c.next_msg().await;
        assert_eq!(
            (m["body"].clone(), m["epoch"].clone()),
            (json!("after"), ack["epoch"].clone()),
            "{who} got it, nothing dropped as a duplicate"
        );
    }
    // A sender on a process that never saw carol's inbox.
    let mut eve = connect_to(&urls[2], "eve").await;
    send_retrying(&mut eve, "user:carol", "after").await;
    let m = carol.next_msg().await;
    assert_eq!(m["body"], "after", "{m}");
    assert_ne!(m["epoch"], old_inbox_epoch, "{m}");
    // A client that had seq 6 of the old epoch is told about the gap.
    let mut late = connect_to(&urls[1], "late").await;
    let j = late
        .request(json!({"type": "join", "room": "r", "since": 6, "epoch": old_epoch}))
        .await;
    assert_eq!(j["recovered"], false, "{j}");
    drop(gws.procs.drain(..));
}

/// Sends `body` with one msg id until it is acknowledged, as a client does after
/// `unknown_outcome` or `unavailable`.
async fn send_retrying(c: &mut Client, room: &str, body: &str) -> Value {
    let msg_id = format!("retry-{}", rand::random::<u32>());
    for _ in 0..20 {
        let r = c
            .request(json!({"type": "send", "room": room, "msg_id": msg_id, "body": body}))
            .await;
        match r["code"].as_str() {
            None => return r,
            Some("unknown_outcome" | "unavailable") => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Some(_) => panic!("send {body}: {r}"),
        }
    }
    panic!("send {body} never acknowledged");
}

/// `GET /readyz` of a process until it answers `want`; how long that took.
fn wait_ready(p: &GatewayProcess, want: u16, within: Duration) -> Duration {
    let start = Instant::now();
    p.wait_ready(want, within);
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_redis_makes_calls_fail_in_bounded_time_and_readiness_recovers() {
    let redis = RedisServer::start();
    let proxy = BlackHole::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let gw = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_ENGINE", "redis"),
        ("CHATGW_REDIS__URL", &url),
        ("CHATGW_REDIS__READINESS_GRACE", "2s"),
        ("CHATGW_LIMITS__MESSAGE_RATE", "1000"),
        ("CHATGW_LIMITS__USER_MESSAGE_RATE", "0"),
        ("CHATGW_LIMITS__MESSAGE_BURST", "1000"),
    ]);
    gw.wait_ready(200, Duration::from_secs(30));
    let mut alice = Client::connect(&gw.ws_url("user=alice"))
        .await
        .expect("alice");
    alice.join("r").await;
    let mut leaver = Client::connect(&gw.ws_url("user=leaver"))
        .await
        .expect("leaver");
    leaver.join("r").await;
    for i in 0..5 {
        leaver.join(&format!("extra{i}")).await;
    }

    proxy.black_hole();
    let timed = |r: &Value, t: Instant, what: &str| {
        let took = t.elapsed();
        eprintln!("black hole: {what} answered {} in {took:?}", r["code"]);
        assert_eq!(r["type"], "error", "{what}: {r}");
        assert!(took < Duration::from_secs(8), "{what} took {took:?}");
    };
    let t = Instant::now();
    let r = alice
        .request(json!({"type": "send", "room": "r", "msg_id": "m1", "body": 1}))
        .await;
    timed(&r, t, "send");
    assert!(
        r["code"] == "unknown_outcome" || r["code"] == "unavailable",
        "{r}"
    );
    let t = Instant::now();
    let r = alice.request(json!({"type": "join", "room": "r2"})).await;
    timed(&r, t, "join");
    let t = Instant::now();
    let r = alice.request(json!({"type": "history", "room": "r"})).await;
    timed(&r, t, "history");
    // A close with six rooms to leave does not hang on Redis either.
    let before = gw.metric("chatgateway_connections");
    leaver.kill();
    let t = Instant::now();
    while gw.metric("chatgateway_connections") >= before {
        assert!(t.elapsed() < Duration::from_secs(10), "the close hangs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("black hole: a close with 6 rooms took {:?}", t.elapsed());
    let not_ready = wait_ready(&gw, 503, Duration::from_secs(15));
    eprintln!("black hole: /readyz 503 after {not_ready:?} (grace 2s)");

    // Redis answers again, on new connections only: the gateway must let go of the old.
    proxy.restore();
    let ready = wait_ready(&gw, 200, Duration::from_secs(30));
    eprintln!("black hole: /readyz 200 again {ready:?} after the restore");
    let r = alice
        .request(json!({"type": "send", "room": "r", "msg_id": "m1", "body": 1}))
        .await;
    assert_eq!(r["type"], "ok", "the retry with the same msg_id: {r}");
    let mut bob = Client::connect(&gw.ws_url("user=bob")).await.expect("bob");
    bob.join("r").await;
    assert_eq!(alice.send("r", json!("back")).await["type"], "ok");
    let m = bob.next_msg().await;
    assert_eq!(m["body"], "back", "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_rooms_that_do_not_exist_creates_nothing_in_redis() {
    let redis = RedisServer::start();
    let mut config = gateway_config(&redis);
    // Reading without joining (the default namespace asks for a join first).
    config.namespaces = vec![NamespaceConfig {
        history_without_join: true,
        ..Default::default()
    }];
    let gw = gateway_with(config).await;
    let prefix = gw.gateway.node.config.redis.key_prefix.clone();
    let room_keys = || -> usize {
        match redis.command(&["KEYS", &format!("{prefix}:{{*")]) {
            Ok(redis::Value::Array(keys)) => keys.len(),
            other => panic!("KEYS: {other:?}"),
        }
    };
    let mut c = gw.connect("reader").await;
    c.request(json!({"type": "ping"})).await;
    let before = room_keys();
    for i in 0..50 {
        let r = c
            .request(json!({"type": "history", "room": format!("nobody-{i}")}))
            .await;
        assert_eq!(
            (r["type"].clone(), r["top"].clone()),
            (json!("ok"), json!(0)),
            "{r}"
        );
    }
    assert_eq!(room_keys(), before, "history of unknown rooms wrote no key");
    gw.stop().await;
}

fn publish(room: &str, from: &str, msg_id: &str, body: &str) -> Publish {
    Publish {
        room: room.into(),
        from: from.into(),
        msg_id: msg_id.into(),
        body: serde_json::value::RawValue::from_string(body.into()).expect("raw"),
        traceparent: None,
    }
}

/// The epoch rule's third witness: a node subscribed to a room sees a seq appended a
/// second time by a node that never saw the room (Redis fell behind in between, and the
/// subscribed node has not reconnected). It starts a new epoch and publishes the message
/// again, so it is not dropped as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_node_repairs_a_seq_numbered_again_by_a_node_that_never_saw_the_room() {
    let redis = RedisServer::start();
    let prefix = format!("rep{:08x}", rand::random::<u32>());
    let hub = Arc::new(Hub::default());
    let watcher = redis.engine(&prefix, hub.clone()).await;
    let writer = redis.engine(&prefix, Arc::new(Hub::default())).await;
    let (queue, mut rx) = chat_gateway::outbound::queue(10_000, 1 << 30);
    hub.subscribe(&Arc::from("r"), 1, queue);
    watcher.subscribe("r").await.expect("subscribe");
    let mut old = None;
    for i in 1..=5 {
        let p = writer
            .publish(publish("r", "w", &format!("m{i}"), "0"))
            .await
            .expect("publish");
        old = Some(p.at.epoch);
    }
    let old = old.expect("epoch");
    let delivered = |rx: &mut OutboundReceiver| -> Vec<(u64, String, String)> {
        std::iter::from_fn(|| rx.try_recv_for_test())
            .filter_map(|i| match i {
                Outbound::Msg(e) => {
                    let v: Value = serde_json::from_str(&e.frame).ok()?;
                    Some((e.seq, e.epoch.to_string(), v["body"].to_string()))
                }
                _ => None,
            })
            .collect()
    };
    let mut got = Vec::new();
    until_async(Duration::from_secs(5), || {
        got.extend(delivered(&mut rx));
        got.len() >= 5
    })
    .await;
    // Redis falls behind (as after a restore) and a node that never saw the room sends.
    watcher.rewind_for_test("r", Some(3)).await;
    let stranger = redis.engine(&prefix, Arc::new(Hub::default())).await;
    let p = stranger
        .publish(publish("r", "s", "late", "\"late\""))
        .await
        .expect("publish");
    assert_eq!(
        (p.at.seq, &p.at.epoch),
        (4, &old),
        "the stranger numbers on"
    );
    let mut after = Vec::new();
    until_async(Duration::from_secs(10), || {
        after.extend(delivered(&mut rx));
        after.iter().any(|(_, e, b)| *e != *old && b == "\"late\"")
    })
    .await;
    let (seq, epoch, _) = after
        .iter()
        .find(|(_, e, b)| *e != *old && b == "\"late\"")
        .cloned()
        .expect("repaired");
    assert_eq!(seq, 1, "numbered from 1 in the new epoch");
    let page = watcher
        .history(
            "r",
            HistoryQuery {
                since: Some(0),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(*page.epoch, *epoch);
    assert_eq!(page.messages.len(), 1);
}

async fn until_async(within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_keys_expire_unless_a_live_node_refreshes_them() {
    let redis = RedisServer::start();
    let mut config = gateway_config(&redis);
    // Reading without joining (the default namespace asks for a join first).
    config.namespaces = vec![NamespaceConfig {
        history_without_join: true,
        ..Default::default()
    }];
    let gw = gateway_with(config).await;
    let prefix = gw.gateway.node.config.redis.key_prefix.clone();
    let mut c = gw.connect("present").await;
    c.join("here").await;
    for suffix in ["pc", "pu"] {
        let key = format!("{prefix}:{{here}}:{suffix}");
        let ttl = match redis.command(&["PTTL", &key]) {
            Ok(redis::Value::Int(ms)) => ms,
            other => panic!("PTTL {key}: {other:?}"),
        };
        // A crashed node refreshes nothing: its entries (and the keys, if it was the last
        // node in the room) go by themselves.
        assert!(ttl > 0 && ttl <= 90_000, "{key} expires: {ttl} ms");
    }
    gw.stop().await;
}
