//! Several real gateway processes sharing one real Redis behave as one chat service.
//! They verify JWTs, as in production.

use e2e::fleet::wait_until;
use e2e::gateways::Gateways;
use e2e::presence::{assert_storm_batched, join_storm};
use e2e::redis::RedisServer;
use e2e::Client;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

fn cluster(redis: &RedisServer, n: usize, extra: &[(&str, &str)]) -> Gateways {
    Gateways::start_jwt(redis, n, extra)
}

async fn connect(gws: &Gateways, i: usize, user: &str) -> Client {
    gws.connect(i, user).await
}

async fn next_in(c: &mut Client, room: &str) -> Value {
    loop {
        let m = c.next_msg().await;
        if m["room"] == room {
            return m;
        }
    }
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_processes_chat_and_dm() {
    let redis = RedisServer::start();
    let gws = cluster(&redis, 3, &[]);
    let mut alice = connect(&gws, 0, "alice").await;
    let mut bob = connect(&gws, 1, "bob").await;
    let mut carol = connect(&gws, 2, "carol").await;
    assert_eq!(bob.welcome["node"], "gw-1");
    for c in [&mut alice, &mut bob, &mut carol] {
        c.join("lobby").await;
    }
    let ack = alice.send("lobby", json!({"text": "hello cluster"})).await;
    assert_eq!(ack["type"], "ok", "{ack}");
    for c in [&mut bob, &mut carol] {
        let m = c.next_msg().await;
        assert_eq!(
            (m["from"].as_str(), m["seq"].as_u64()),
            (Some("alice"), Some(1))
        );
        assert_eq!(m["body"]["text"], "hello cluster");
    }
    // Presence is the same seen from every process.
    for c in [&mut alice, &mut bob, &mut carol] {
        let p = c
            .request(json!({"type": "presence", "room": "lobby"}))
            .await;
        assert_eq!(p["users"], json!(["alice", "bob", "carol"]), "{p}");
    }
    // A DM reaches every connection of the recipient, on every process.
    let mut alice2 = connect(&gws, 1, "alice").await;
    alice.request(json!({"type": "ping"})).await;
    alice2.request(json!({"type": "ping"})).await;
    let ack = carol.send("user:alice", json!("psst")).await;
    assert_eq!(ack["type"], "ok");
    for a in [&mut alice, &mut alice2] {
        let m = next_in(a, "user:alice").await;
        assert_eq!(
            (m["from"].as_str(), m["body"].as_str()),
            (Some("carol"), Some("psst"))
        );
    }
    // A user id outside the room-name characters has its inbox written with %XX escapes.
    let mut zoe = connect(&gws, 2, "zoë a").await;
    zoe.request(json!({"type": "ping"})).await;
    let ack = bob.send("user:zo%C3%AB%20a", json!("hej")).await;
    assert_eq!(ack["type"], "ok", "{ack}");
    let m = next_in(&mut zoe, "user:zo%C3%AB%20a").await;
    assert_eq!(
        (m["from"].as_str(), m["body"].as_str()),
        (Some("bob"), Some("hej"))
    );
    // Presence leave crosses processes too. Bob knows everyone from the `presence`
    // answer; pushes of the joins may still be unread and change nothing.
    drop(carol);
    let mut seen = ["alice", "bob", "carol"].map(String::from).into();
    let left = ["alice", "bob"].map(String::from).into();
    bob.presence_until("lobby", &mut seen, &left).await;
}

/// Issue 23 across processes: each node batches the changes it hears from Redis for its
/// own members, so a join storm spread over three processes costs each member a few
/// presence frames, and each still learns who is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_across_processes_costs_each_member_a_few_presence_frames() {
    const N: usize = 60;
    let redis = RedisServer::start();
    // A window longer than the storm takes on any machine.
    let gws = cluster(&redis, 3, &[("CHATGW_LIMITS__PRESENCE_BATCH", "1s")]);
    let mut members = Vec::new();
    for i in 0..N {
        members.push(connect(&gws, i % 3, &format!("u{i:02}")).await);
    }
    let mut last = connect(&gws, 0, "last").await;
    let frames = join_storm(&mut members, &mut last, "storm").await;
    assert_storm_batched(&frames, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_order_across_processes_with_concurrent_senders() {
    let redis = RedisServer::start();
    let gws = cluster(&redis, 3, &[]);
    let mut watchers = Vec::new();
    for i in 0..3 {
        let mut w = connect(&gws, i, &format!("watcher{i}")).await;
        w.join("ordered").await;
        watchers.push(w);
    }
    let mut senders = Vec::new();
    for i in 0..3 {
        let mut s = connect(&gws, i, &format!("sender{i}")).await;
        s.join("ordered").await;
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0..30 {
                let r = s.send("ordered", json!({"s": i, "k": k})).await;
                assert_eq!(r["type"], "ok", "{r}");
                acked.push(r["seq"].as_u64().unwrap_or(0));
            }
            acked
        }));
    }
    let mut all = BTreeSet::new();
    for s in senders {
        all.extend(s.await.expect("sender"));
    }
    assert_eq!(all, (1..=90).collect::<BTreeSet<u64>>());
    for w in &mut watchers {
        let mut got = Vec::new();
        while got.len() < 90 {
            got.push(w.next_msg().await);
        }
        assert_eq!(
            seqs(&got),
            (1..=90).collect::<Vec<u64>>(),
            "same total order on every process"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_of_a_killed_process_resumes_on_another_exactly() {
    let redis = RedisServer::start();
    let mut gws = cluster(&redis, 3, &[]);
    let mut reader = connect(&gws, 0, "reader").await;
    reader.join("news").await;
    reader.join("sports").await;
    let mut sender = connect(&gws, 1, "sender").await;
    sender.join("news").await;
    sender.join("sports").await;
    for i in 1..=3 {
        sender.send("news", json!(i)).await;
    }
    let seen = reader.drain_msgs(Duration::from_millis(500)).await;
    assert_eq!(seqs(&seen), [1, 2, 3]);
    let token = reader.resume_token();
    // A killed process saves nothing at the end: only the save its joins scheduled
    // (200 ms after the first) holds the rooms.
    wait_until(
        "the session saved with both rooms",
        Duration::from_secs(10),
        || {
            redis
                .stored_session(&token)
                .is_some_and(|s| s["rooms"].get("sports").is_some())
        },
    )
    .await;
    gws.procs[0].kill_and_reap();
    drop(reader);
    for i in 4..=7 {
        assert_eq!(sender.send("news", json!(i)).await["type"], "ok");
    }
    sender.send("sports", json!("goal")).await;
    let mut reader = connect(&gws, 2, "reader").await;
    let reply = reader
        .request(json!({"type": "resume", "resume_token": token, "positions": {"news": 3}}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["rooms"]["news"]["recovered"], true, "{reply}");
    assert_eq!(
        reply["rooms"]["sports"]["recovered"], true,
        "sports comes from the session in Redis: {reply}"
    );
    sender.send("news", json!(8)).await;
    let got = reader.drain_msgs(Duration::from_millis(700)).await;
    let news: Vec<u64> = got
        .iter()
        .filter(|m| m["room"] == "news")
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    let sports: Vec<u64> = got
        .iter()
        .filter(|m| m["room"] == "sports")
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        news,
        [4, 5, 6, 7, 8],
        "exactly the missed ones, then live, none twice"
    );
    assert_eq!(sports, [1]);
}

/// A client whose old socket is still open (it changed networks: the gateway would see
/// that socket die only at the heartbeat's timeout) resumes on another process: the
/// connection left behind is closed there at once (4409), not kept receiving until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_process_closes_the_connection_left_behind() {
    let redis = RedisServer::start();
    let gws = cluster(&redis, 2, &[]);
    let mut old = connect(&gws, 0, "reader").await;
    old.join("news").await;
    let token = old.resume_token();
    wait_until("the session saved, open", Duration::from_secs(10), || {
        redis
            .stored_session(&token)
            .is_some_and(|s| s["open"] == true)
    })
    .await;
    let mut new = connect(&gws, 1, "reader").await;
    let reply = new
        .request(json!({"type": "resume", "resume_token": token}))
        .await;
    assert_eq!(reply["rooms"]["news"]["recovered"], true, "{reply}");
    assert_eq!(
        old.expect_close().await,
        Some((4409, "session resumed elsewhere".to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_loses_no_acknowledged_message() {
    let mut redis = RedisServer::start_persistent();
    let mut gws = cluster(&redis, 2, &[("CHATGW_REDIS__READINESS_GRACE", "1s")]);
    let mut alice = connect(&gws, 0, "alice").await;
    let mut bob = connect(&gws, 1, "bob").await;
    alice.join("r").await;
    bob.join("r").await;
    let mut acked = BTreeSet::new();
    let mut unavailable = 0;
    let mut outage_seen = false;
    for i in 0..120 {
        if i == 30 {
            redis.stop();
        }
        if i == 60 {
            // Readiness went false during the outage, on both processes.
            for gw in &gws.procs {
                gw.wait_ready(503, Duration::from_secs(10));
            }
            outage_seen = true;
            redis.start_again();
            for gw in &gws.procs {
                gw.wait_ready(200, Duration::from_secs(20));
            }
        }
        let r = alice
            .request(json!({"type": "send", "room": "r", "msg_id": format!("m{i}"), "body": i}))
            .await;
        match (r["type"].as_str(), r["code"].as_str()) {
            (Some("ok"), _) => {
                acked.insert(r["seq"].as_u64().expect("seq"));
            }
            // unknown_outcome: Redis went away mid-call; not acknowledged either.
            (Some("error"), Some("unavailable" | "unknown_outcome")) => unavailable += 1,
            other => panic!("send {i}: neither ok nor unavailable: {other:?} {r}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        outage_seen && unavailable > 0,
        "the outage was noticed ({unavailable} unavailable)"
    );
    assert!(
        acked.len() >= 60,
        "sends before and after the outage succeed: {}",
        acked.len()
    );
    for gw in &mut gws.procs {
        assert!(gw.alive(), "no process crashed");
    }
    // Every acknowledged message is in history and reached bob (who stayed connected).
    let got: BTreeSet<u64> = seqs(&bob.drain_msgs(Duration::from_millis(1500)).await)
        .into_iter()
        .collect();
    let missing: Vec<_> = acked.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
    let h = bob
        .request(json!({"type": "history", "room": "r", "limit": 500}))
        .await;
    let in_history: BTreeSet<u64> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        acked.is_subset(&in_history),
        "acknowledged but not in history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_means_not_recovered_then_new_messages_flow() {
    let mut redis = RedisServer::start();
    let gws = cluster(&redis, 2, &[("CHATGW_REDIS__READINESS_GRACE", "1s")]);
    let mut stayer = connect(&gws, 0, "stayer").await;
    stayer.join("room").await;
    let mut leaver = connect(&gws, 1, "leaver").await;
    leaver.join("room").await;
    for i in 1..=3 {
        stayer.send("room", json!(i)).await;
    }
    assert_eq!(
        seqs(&leaver.drain_msgs(Duration::from_millis(400)).await),
        [1, 2, 3]
    );
    assert_eq!(
        seqs(&stayer.drain_msgs(Duration::from_millis(100)).await),
        [1, 2, 3]
    );
    let old_epoch = stayer
        .request(json!({"type": "history", "room": "room", "limit": 1}))
        .await["epoch"]
        .clone();
    let token = leaver.resume_token();
    drop(leaver);
    redis.restart_empty();
    for gw in &gws.procs {
        gw.wait_ready(200, Duration::from_secs(20));
        // Ready stays 200 for `readinessGrace` while pub/sub is down, and a join refuses
        // until it is back: wait for each gateway's pub/sub reconnect.
        wait_until("pub/sub reconnected", Duration::from_secs(20), || {
            gw.sample("chatgateway_redis_reconnects_total")
                .is_some_and(|n| n >= 1.0)
        })
        .await;
    }
    let mut leaver = connect(&gws, 1, "leaver").await;
    let reply = leaver
        .request(json!({"type": "resume", "resume_token": token, "positions": {"room": {"seq": 3, "epoch": old_epoch}}}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    // Caught up in a new epoch: a refusal also says `recovered: false`, but has no epoch.
    let room = &reply["rooms"]["room"];
    assert!(
        room.get("error").is_none(),
        "the room was not resumed: {reply}"
    );
    assert_eq!(room["recovered"], false, "{reply}");
    assert!(room["epoch"].is_string(), "{reply}");
    assert_ne!(room["epoch"], old_epoch);
    // New messages flow to both, with the new epoch's seqs.
    let ack = leaver.send("room", json!("after")).await;
    assert_eq!(ack["type"], "ok", "{ack}");
    assert_eq!(ack["seq"], 1);
    let m = stayer.next_msg().await;
    assert_eq!(
        (m["seq"].as_u64(), m["body"].as_str()),
        (Some(1), Some("after"))
    );
    let m = leaver.next_msg().await;
    assert_eq!(m["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_on_another_node_after_a_reconnect_is_posted_once() {
    let redis = RedisServer::start();
    let gws = cluster(&redis, 2, &[]);
    let mut bob = connect(&gws, 1, "bob").await;
    bob.join("deals").await;
    let mut alice = connect(&gws, 0, "alice").await;
    alice.join("deals").await;
    let first = alice
        .request(json!({"type": "send", "room": "deals", "msg_id": "a-1", "body": "once"}))
        .await;
    assert_eq!(first["type"], "ok", "{first}");
    // The connection breaks before the client saw the ack of its next send.
    alice
        .send_cmd(json!({"type": "send", "room": "deals", "msg_id": "a-2", "body": "lost ack"}))
        .await;
    let token = alice.resume_token();
    alice.kill();
    // The server got it before the socket broke (bob sees it).
    assert_eq!(next_in(&mut bob, "deals").await["msg_id"], "a-1");
    assert_eq!(next_in(&mut bob, "deals").await["msg_id"], "a-2");
    // Bob's copy does not mean node 0 has seen the socket end and saved the session:
    // it is unregistered only after.
    wait_until(
        "node 0 closed alice's connection",
        Duration::from_secs(10),
        || gws.procs[0].metric("chatgateway_connections") == 0.0,
    )
    .await;
    // It reconnects to the other node, resumes, and retries both with the same msg_ids.
    let mut alice = connect(&gws, 1, "alice").await;
    let resumed = alice
        .request(json!({"type": "resume", "resume_token": token}))
        .await;
    assert_eq!(resumed["type"], "ok", "{resumed}");
    let again = alice
        .request(json!({"type": "send", "room": "deals", "msg_id": "a-1", "body": "once"}))
        .await;
    assert_eq!(
        (&again["type"], &again["seq"], &again["duplicate"]),
        (&json!("ok"), &first["seq"], &json!(true)),
        "{again}"
    );
    let retried = alice
        .request(json!({"type": "send", "room": "deals", "msg_id": "a-2", "body": "lost ack"}))
        .await;
    assert_eq!(retried["type"], "ok", "{retried}");
    assert_eq!(retried["seq"], 2, "{retried}");
    assert_eq!(
        retried["duplicate"], true,
        "the first attempt was posted: {retried}"
    );
    let next = alice.send("deals", json!("after")).await;
    assert_eq!(next["seq"], 3);
    // Bob got each message once: nothing more than the next one.
    let got = bob.drain_msgs(Duration::from_millis(700)).await;
    assert_eq!(seqs(&got), [3], "{got:?}");
}
