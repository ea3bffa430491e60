//! Presence pushes seen by a member: a join/leave loop (the linger, issue 18) and a join
//! storm (the batching, issue 23).

use super::tests::{config, Harness};
use crate::node::Node;
use crate::outbound::Outbound;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// The presence frames queued since the last look.
fn presence_frames(h: &mut Harness) -> Vec<Value> {
    std::iter::from_fn(|| h.rx.try_recv_for_test())
        .filter_map(|i| match i {
            Outbound::Frame(f) => serde_json::from_str::<Value>(&f).ok(),
            _ => None,
        })
        .filter(|f| f["type"] == "presence")
        .collect()
}

fn users(frame: &Value, list: &str) -> Vec<String> {
    frame[list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// (user, "join" | "leave") of the presence frames queued since the last look.
fn presence_events(h: &mut Harness) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in presence_frames(h) {
        out.extend(users(&f, "joined").into_iter().map(|u| (u, "join".into())));
        out.extend(users(&f, "left").into_iter().map(|u| (u, "leave".into())));
    }
    out
}

// Paused: the lingers fire before the test's longer sleep, however late the thread runs.
#[tokio::test(start_paused = true)]
async fn a_join_leave_loop_announces_one_join_and_one_leave() {
    let mut c = config();
    c.limits.presence_linger = Duration::from_millis(200);
    // Each change pushed at once: this is about the linger, not the batching.
    c.limits.presence_batch = Duration::ZERO;
    let node = Node::new(c, Default::default()).expect("node");
    let mut watcher = Harness::on(node.clone(), "watcher").await;
    watcher
        .cmd(json!({"type": "join", "id": 1, "room": "r"}))
        .await;
    let mut churn = Harness::on(node.clone(), "churn").await;
    presence_events(&mut watcher);
    for i in 0..10 {
        churn
            .cmd(json!({"type": "join", "id": 2 * i, "room": "r"}))
            .await;
        churn
            .cmd(json!({"type": "leave", "id": 2 * i + 1, "room": "r"}))
            .await;
    }
    // A new connection of the same user joining and closing is coalesced as well.
    for _ in 0..3 {
        let mut again = Harness::on(node.clone(), "churn").await;
        again
            .cmd(json!({"type": "join", "id": 1, "room": "r"}))
            .await;
        again.session.close(&HashMap::new()).await;
    }
    assert_eq!(
        presence_events(&mut watcher),
        [("churn".into(), "join".into())]
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        presence_events(&mut watcher),
        [("churn".into(), "leave".into())]
    );
    assert_eq!(
        node.engine.presence("r").await.expect("presence"),
        ["watcher"]
    );
}

#[tokio::test]
async fn a_join_storm_costs_each_member_a_few_frames_not_one_per_join() {
    const N: usize = 60;
    let mut c = config();
    // The longest window: the storm below fits in it on any machine, and the test ends
    // the window itself (flush_presence) instead of waiting for it.
    c.limits.presence_batch = Duration::from_secs(5);
    c.limits.connections_per_user = 0;
    let node = Node::new(c, Default::default()).expect("node");
    let mut members = Vec::new();
    for i in 0..N {
        let mut m = Harness::on(node.clone(), &format!("u{i:02}")).await;
        m.cmd(json!({"type": "join", "id": 1, "room": "storm"}))
            .await;
        members.push(m);
    }
    node.hub.flush_presence();
    let all: BTreeSet<String> = (0..N).map(|i| format!("u{i:02}")).collect();
    let mut total = 0;
    for (i, m) in members.iter_mut().enumerate() {
        let frames = presence_frames(m);
        total += frames.len();
        // At most a window's end plus the batches that filled up early, whatever the
        // timing; one frame per join would be N - i.
        assert!(
            frames.len() <= 1 + N / crate::presence::MAX_USERS + 1,
            "member {i} got {} frames",
            frames.len()
        );
        let heard: BTreeSet<String> = frames.iter().flat_map(|f| users(f, "joined")).collect();
        assert!(frames.iter().all(|f| users(f, "left").is_empty()));
        // Everyone who joined after this member is announced to it (and with the
        // `presence` reply for those before, it knows the whole room).
        let later: BTreeSet<String> = all.iter().skip(i).cloned().collect();
        assert!(heard.is_superset(&later), "member {i} heard {heard:?}");
    }
    assert!(
        total < N * 3,
        "{total} frames for {N} joins (one per join: {})",
        N * (N + 1) / 2
    );
    assert_eq!(node.engine.presence("storm").await.expect("list").len(), N);
}

#[tokio::test]
async fn a_user_who_joins_and_leaves_within_a_window_is_announced_as_left() {
    let mut c = config();
    c.limits.presence_batch = Duration::from_secs(5);
    c.limits.presence_linger = Duration::ZERO;
    let node = Node::new(c, Default::default()).expect("node");
    let mut watcher = Harness::on(node.clone(), "watcher").await;
    watcher
        .cmd(json!({"type": "join", "id": 1, "room": "r"}))
        .await;
    let mut guest = Harness::on(node.clone(), "guest").await;
    guest
        .cmd(json!({"type": "join", "id": 1, "room": "r"}))
        .await;
    guest
        .cmd(json!({"type": "leave", "id": 2, "room": "r"}))
        .await;
    node.hub.flush_presence();
    let frames = presence_frames(&mut watcher);
    assert_eq!(
        frames,
        [json!({"type": "presence", "room": "r", "joined": ["watcher"], "left": ["guest"]})]
    );
}
