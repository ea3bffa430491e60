//! Handlers under hostile clients and faults (issue 18), against the memory engine and a
//! wrapper of it that fails on demand: pages and replays bounded by bytes, direct messages
//! per device until acknowledged, a resume that fails half-way, ambiguous sends, untrusted
//! trace context, an inbox head the engine read while subscribing. (Presence of a
//! join/leave loop: tests_presence.rs; the failing engine: tests_faulty.rs.)

use super::tests::{config, error_code, Harness, Item};
use super::tests_faulty::Faulty;
use crate::engine::{HistoryQuery, Publish};
use crate::node::Node;
use crate::protocol::StreamPosition;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// A body of about `n` bytes.
fn body(n: usize) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(&"x".repeat(n)).expect("raw")
}

async fn publish_big(node: &Node, room: &str, n: usize, size: usize) {
    for i in 0..n {
        node.engine
            .publish(Publish {
                room: room.into(),
                from: "bob".into(),
                msg_id: format!("big{i}"),
                body: body(size),
                traceparent: None,
            })
            .await
            .expect("publish");
    }
}

fn seqs_of(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["seq"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn history_pages_are_capped_by_bytes_and_say_there_is_more() {
    let mut c = config();
    c.limits.history_page_bytes = 4096;
    let node = Node::new(c, Default::default()).expect("node");
    publish_big(&node, "r", 10, 1000).await;
    let mut h = Harness::on(node, "alice").await;
    h.cmd(json!({"type": "ping", "id": 0})).await;
    // Reading history needs the room joined (the namespace default).
    h.cmd(json!({"type": "join", "id": 100, "room": "r"})).await;
    h.drain();
    let mut got = Vec::new();
    let mut before = None;
    for id in 1.. {
        let mut cmd = json!({"type": "history", "id": id, "room": "r", "limit": 500});
        if let Some(b) = before {
            cmd["before"] = json!(b);
        }
        h.cmd(cmd).await;
        let page = h.reply();
        let seqs = seqs_of(&page);
        assert!(
            seqs.len() <= 3,
            "3 frames of ~1.1 kB fit in 4096 bytes: {seqs:?}"
        );
        got.splice(0..0, seqs.iter().copied());
        if page["more"] == false {
            break;
        }
        before = seqs.first().copied();
        assert!(id < 10, "paging ends");
    }
    assert_eq!(
        got,
        (1..=10).collect::<Vec<u64>>(),
        "every message exactly once"
    );
}

#[tokio::test]
async fn a_large_replay_streams_in_chunks_then_releases_the_live_messages() {
    let mut c = config();
    c.limits.replay_chunk_bytes = 4096;
    let node = Node::new(c, Default::default()).expect("node");
    publish_big(&node, "r", 12, 1000).await;
    let mut h = Harness::on(node, "alice").await;
    h.cmd(json!({"type": "ping", "id": 0})).await;
    h.drain();
    h.cmd(json!({"type": "join", "id": 1, "room": "r", "since": 0}))
        .await;
    let items = h.drain();
    let chunks: Vec<&Vec<u64>> = items
        .iter()
        .filter_map(|i| match i {
            Item::Replay(room, 0, seqs) if room == "r" => Some(seqs),
            _ => None,
        })
        .collect();
    assert!(chunks.len() >= 4, "several chunks: {items:?}");
    assert!(chunks.iter().all(|c| c.len() <= 3), "{chunks:?}");
    let all: Vec<u64> = chunks.into_iter().flatten().copied().collect();
    assert_eq!(all, (1..=12).collect::<Vec<u64>>());
    assert_eq!(items.last(), Some(&Item::Release("r".into())));
}

#[tokio::test]
async fn dms_reach_a_second_device_until_a_device_acknowledges_them() {
    let mut phone = Harness::new("bob").await;
    let node = phone.node.clone();
    phone.publish("user:bob", "alice", "d1").await;
    phone.publish("user:bob", "alice", "d2").await;
    let live = phone.drain();
    assert_eq!(
        live,
        [
            Item::Msg("user:bob".into(), 1),
            Item::Msg("user:bob".into(), 2)
        ]
    );

    // Reaching the phone's socket is not a read: a new device still gets both.
    let mut laptop = Harness::on(node.clone(), "bob").await;
    laptop.cmd(json!({"type": "ping", "id": 1})).await;
    assert!(
        laptop
            .drain()
            .contains(&Item::Replay("user:bob".into(), 0, vec![1, 2])),
        "unacknowledged DMs are replayed"
    );

    // The phone acknowledges them: a device that starts now begins after them.
    phone.cmd(json!({"type": "ack", "id": 2, "seq": 2})).await;
    let ok = phone.reply();
    assert_eq!(
        (ok["room"].clone(), ok["seq"].clone()),
        (json!("user:bob"), json!(2))
    );
    let mut tablet = Harness::on(node.clone(), "bob").await;
    tablet.cmd(json!({"type": "ping", "id": 3})).await;
    assert!(
        tablet
            .drain()
            .contains(&Item::Replay("user:bob".into(), 2, vec![])),
        "acknowledged ones are not replayed to a new device"
    );

    // The laptop never acknowledged: its resumed session replays them again.
    let token = laptop.session.resume_token.to_string();
    laptop.session.close(&HashMap::new()).await;
    let mut again = Harness::on(node.clone(), "bob").await;
    again
        .cmd(json!({"type": "resume", "id": 4, "resume_token": token}))
        .await;
    let items = again.drain();
    assert!(
        items.contains(&Item::Replay("user:bob".into(), 0, vec![1, 2])),
        "{items:?}"
    );

    // An ack beyond the inbox's top is refused.
    assert!(phone.cmd(json!({"type": "ack", "id": 5, "seq": 9})).await);
    assert_eq!(error_code(&phone.reply()), "bad_request");
}

#[tokio::test]
async fn a_resume_position_counts_as_an_acknowledgement() {
    let mut h = Harness::fresh("bob").await;
    let node = h.node.clone();
    for i in 1..=3 {
        h.publish("user:bob", "alice", &format!("d{i}")).await;
    }
    let epoch = node
        .engine
        .history("user:bob", HistoryQuery::default())
        .await
        .expect("page")
        .epoch;
    h.cmd(json!({"type": "resume", "id": 1, "resume_token": "none",
        "positions": {"user:bob": {"seq": 2, "epoch": &*epoch}}}))
        .await;
    assert_eq!(
        node.engine.inbox_cursor("bob").await.expect("cursor"),
        Some(StreamPosition::new(epoch, 2))
    );
}

#[tokio::test]
async fn a_resume_whose_inbox_fails_releases_the_held_inbox_and_says_so() {
    let (node, faulty) = Faulty::node(config());
    let mut h = Harness::on(node.clone(), "alice").await; // inbox held until resume
    h.publish("user:alice", "bob", "d1").await;
    assert_eq!(
        h.drain(),
        [Item::Msg("user:alice".into(), 1)],
        "held by the writer"
    );
    faulty.fail_history_of(Some("user:alice"));
    h.cmd(json!({"type": "resume", "id": 1, "resume_token": "gone",
        "positions": {"user:alice": 0, "lobby": 0}}))
        .await;
    faulty.fail_history_of(None);
    let items = h.drain();
    let reply = items
        .iter()
        .find_map(|i| match i {
            Item::Frame(f) if f["type"] == "ok" => Some(f.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("an ok reply: {items:?}"));
    assert_eq!(
        reply["rooms"]["user:alice"]["error"], "unavailable",
        "{reply}"
    );
    assert_eq!(
        reply["rooms"]["lobby"]["recovered"], true,
        "other rooms resume"
    );
    assert!(
        items.contains(&Item::Release("user:alice".into())),
        "held-back DMs are released, not held forever: {items:?}"
    );
    assert!(!h.session.inbox_pending, "nothing is left pending");
    // Nothing was acknowledged: a later device gets the DM.
    let mut other = Harness::on(node, "alice").await;
    other.cmd(json!({"type": "ping", "id": 2})).await;
    assert!(other
        .drain()
        .contains(&Item::Replay("user:alice".into(), 0, vec![1])));
}

/// The device's inbox position survives a resume whose inbox part failed: its session
/// saves it, and the next resume replays from there. Before, the record had no inbox
/// entry and that resume fell back to the user's cursor, which another device had moved
/// past DMs this one never got.
#[tokio::test]
async fn a_failed_inbox_resume_keeps_the_devices_position_for_the_next_one() {
    let (node, faulty) = Faulty::node(config());
    let mut h = Harness::on(node.clone(), "alice").await;
    for m in ["d1", "d2", "d3"] {
        h.publish("user:alice", "bob", m).await;
    }
    let epoch = h.epoch("user:alice").await;
    h.drain();
    faulty.fail_history_of(Some("user:alice"));
    h.cmd(json!({"type": "resume", "id": 1, "resume_token": "gone",
        "positions": {"user:alice": {"seq": 1, "epoch": &*epoch}}}))
        .await;
    faulty.fail_history_of(None);
    // Another device acknowledges all three meanwhile.
    let acked = StreamPosition::new(epoch.clone(), 3);
    node.engine.ack_inbox("alice", &acked).await.expect("ack");
    let token = h.session.resume_token.to_string();
    h.session.close(&Default::default()).await;
    let mut next = Harness::on(node, "alice").await;
    next.cmd(json!({"type": "resume", "id": 2, "resume_token": token}))
        .await;
    assert!(
        next.drain()
            .contains(&Item::Replay("user:alice".into(), 1, vec![2, 3])),
        "replayed from the device's own position"
    );
}

#[tokio::test]
async fn a_send_whose_store_did_not_answer_is_unknown_outcome_not_a_client_fault() {
    let (node, faulty) = Faulty::node(config());
    let mut h = Harness::on(node, "alice").await;
    h.cmd(json!({"type": "ping", "id": 0})).await;
    h.drain();
    faulty.publish_unknown.store(true, Ordering::Relaxed);
    let fault = h
        .cmd(json!({"type": "send", "id": 1, "room": "user:bob", "msg_id": "m1", "body": 1}))
        .await;
    assert!(!fault, "the client did nothing wrong");
    assert_eq!(error_code(&h.reply()), "unknown_outcome");
    // The retry with the same msg_id is stored once.
    faulty.publish_unknown.store(false, Ordering::Relaxed);
    for id in [2, 3] {
        h.cmd(json!({"type": "send", "id": id, "room": "user:bob", "msg_id": "m1", "body": 1}))
            .await;
        assert_eq!(h.reply()["seq"], 1);
    }
}

#[tokio::test]
async fn a_traceparent_that_is_not_one_never_reaches_the_stored_message() {
    let mut h = Harness::new("alice").await;
    h.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
    h.drain();
    let bad = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 m 9 x {}";
    h.cmd(json!({"type": "send", "id": 2, "room": "r", "body": 1, "traceparent": bad}))
        .await;
    let page = h
        .node
        .engine
        .history(
            "r",
            HistoryQuery {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    let frame: Value = serde_json::from_str(&page.messages[0].frame).expect("json");
    assert!(frame.get("traceparent").is_none(), "{frame}");
    assert!(page.messages[0].traceparent.is_none());
}

#[tokio::test]
async fn a_session_saved_at_the_join_of_an_empty_room_resumes_by_the_clients_seq() {
    let mut a = Harness::new("alice").await;
    a.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
    let joined = a.reply_of(1);
    assert_eq!(
        joined["epoch"],
        crate::engine::EMPTY_EPOCH,
        "nothing written yet"
    );
    for i in 1..=3 {
        a.publish("r", "bob", &format!("m{i}")).await;
    }
    // The join's save is done (the socket loop's timer, a moment later), then the node
    // dies: the session is the one saved for the join, with the empty epoch.
    let due = a.session.next_deadline().expect("the join's save is due");
    assert_eq!(a.session.on_deadline(due).await, None);
    let token = a.session.resume_token.to_string();
    let mut b = Harness::on(a.node.clone(), "alice").await;
    b.cmd(json!({"type": "resume", "id": 2, "resume_token": token, "positions": {"r": 2}}))
        .await;
    let items = b.drain();
    assert!(
        items.contains(&Item::Replay("r".into(), 2, vec![3])),
        "the client's seq in the room's real epoch: {items:?}"
    );
}

/// An engine that read an inbox's head while starting to deliver it (the Redis engine:
/// one round trip per connect fewer) hands it to the connection, whose inbox replay or
/// resume starts there without reading it again; what came after it is live.
#[tokio::test]
async fn an_inbox_head_read_by_the_subscription_is_not_read_again() {
    let (node, faulty) = Faulty::node(config());
    faulty.inbox_heads.store(true, Ordering::Relaxed);
    let alice = Harness::on(node.clone(), "alice").await;
    alice.publish("user:bob", "alice", "d1").await;
    alice.publish("user:bob", "alice", "d2").await;
    let epoch = alice.epoch("user:bob").await;
    let reads = || faulty.inbox_head_reads.load(Ordering::Relaxed);
    let before = reads();

    let mut phone = Harness::on(node.clone(), "bob").await;
    alice.publish("user:bob", "alice", "d3").await;
    phone.cmd(json!({"type": "ping", "id": 1})).await;
    let items = phone.drain();
    assert!(
        items.contains(&Item::Replay("user:bob".into(), 0, vec![1, 2])),
        "replayed up to the head read at the subscription, the rest live: {items:?}"
    );
    assert!(
        items.contains(&Item::Msg("user:bob".into(), 3)),
        "{items:?}"
    );

    let mut tablet = Harness::on(node.clone(), "bob").await;
    tablet
        .cmd(json!({"type": "resume", "id": 2, "resume_token": "none",
            "positions": {"user:bob": {"seq": 1, "epoch": &*epoch}}}))
        .await;
    let items = tablet.drain();
    assert!(
        items.contains(&Item::Replay("user:bob".into(), 1, vec![2, 3])),
        "{items:?}"
    );
    assert_eq!(reads(), before, "neither connection read the inbox's head");
}

/// A user past `limits.newRoomsPerHour` sends only to rooms and inboxes with messages: a
/// send that would start one is refused (`quota_exceeded`), counted, and starts nothing.
/// Another user's allowance is its own, and a room someone else started takes the
/// user's messages again.
#[tokio::test]
async fn a_user_starts_at_most_new_rooms_per_hour() {
    let mut c = config();
    c.limits.new_rooms_per_hour = 2;
    c.limits.rooms_per_connection = 10;
    let node = Node::new(c, Default::default()).expect("node");
    let mut mallory = Harness::on(node.clone(), "mallory").await;
    let mut bob = Harness::on(node.clone(), "bob").await;
    async fn send(h: &mut Harness, id: u64, room: &str) -> Value {
        h.cmd(json!({"type": "join", "id": id * 100, "room": room}))
            .await;
        h.drain();
        h.cmd(json!({"type": "send", "id": id, "room": room, "body": "hi"}))
            .await;
        h.reply_of(id)
    }
    assert_eq!(send(&mut bob, 1, "old").await["type"], "ok");
    assert_eq!(send(&mut mallory, 2, "a").await["type"], "ok");
    assert_eq!(send(&mut mallory, 3, "b").await["type"], "ok");
    assert_eq!(
        error_code(&send(&mut mallory, 4, "c").await),
        "quota_exceeded"
    );
    mallory
        .cmd(json!({"type": "send", "id": 5, "room": "user:nobody", "body": "hi"}))
        .await;
    assert_eq!(
        error_code(&mallory.reply_of(5)),
        "quota_exceeded",
        "an inbox too"
    );
    assert_eq!(
        send(&mut mallory, 6, "old").await["type"],
        "ok",
        "it has messages"
    );
    assert_eq!(send(&mut mallory, 7, "a").await["type"], "ok");
    assert_eq!(node.metrics.new_rooms_refused.get(), 2);
    let top = |room: &'static str| {
        let node = node.clone();
        async move {
            let page = node.engine.history(room, HistoryQuery::default()).await;
            page.expect("history").top
        }
    };
    assert_eq!(
        (top("c").await, top("user:nobody").await),
        (0, 0),
        "nothing started"
    );
    assert_eq!(
        send(&mut bob, 8, "c").await["type"],
        "ok",
        "bob's allowance"
    );
    assert_eq!(
        send(&mut mallory, 9, "c").await["type"],
        "ok",
        "c has messages now"
    );
}

/// The send hook's replacement body is held to what the client's was: its namespace's
/// `maxBodyBytes` too, not only `limits.maxFrameBytes` (docs/backend.md: "the same depth
/// and size limits").
#[tokio::test]
async fn a_send_hooks_replacement_is_held_to_the_namespaces_body_limit() {
    let long = r#"{"allow": true, "body": "a replacement of forty bytes or so...."}"#;
    let (addr, received) =
        crate::hooks::tests::answering(200, long, Some(Default::default())).await;
    let mut c = config();
    c.hooks.send = Some(crate::config::HookConfig {
        url: format!("http://{addr}/send"),
        ..Default::default()
    });
    c.namespaces = vec![crate::config::NamespaceConfig {
        prefix: "short:".into(),
        max_body_bytes: 16,
        ..Default::default()
    }];
    let node = Node::new(c, Default::default()).expect("node");
    let mut h = Harness::on(node, "ann").await;
    for (id, room) in [(1, "short:a"), (3, "long")] {
        h.cmd(json!({"type": "join", "id": id, "room": room})).await;
        h.drain();
    }
    h.cmd(json!({"type": "send", "id": 2, "room": "short:a", "body": "hi"}))
        .await;
    let refused = h.reply_of(2);
    assert_eq!(refused["code"], "internal", "{refused}");
    h.cmd(json!({"type": "send", "id": 4, "room": "long", "body": "hi"}))
        .await;
    assert_eq!(
        h.reply_of(4)["type"],
        "ok",
        "no body limit in that namespace"
    );
    assert_eq!(
        received.lock().expect("lock").len(),
        2,
        "the hook was asked twice"
    );
}
