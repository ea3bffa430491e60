//! Handlers under hostile clients and faults (issue 18), against the memory engine and a
//! wrapper of it that fails on demand: pages and replays bounded by bytes, direct messages
//! per device until acknowledged, a resume that fails half-way, ambiguous sends, untrusted
//! trace context. (Presence of a join/leave loop: tests_presence.rs.)

use super::tests::{config, error_code, Harness, Item};
use crate::config::Config;
use crate::engine::memory::MemoryEngine;
use crate::engine::{
    Broker, Engine, EngineError, History, HistoryPage, HistoryQuery, NodeReport, Nodes,
    PresenceManager, Publish, Published, SessionRecord, Sessions,
};
use crate::hub::Hub;
use crate::node::Node;
use crate::protocol::StreamPosition;
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

/// The memory engine, with faults on demand.
struct Faulty {
    inner: MemoryEngine,
    /// History reads of this room fail (engine unavailable).
    history_of: Mutex<Option<String>>,
    /// Publishes fail as if Redis had not answered.
    publish_unknown: AtomicBool,
}

impl Faulty {
    fn node(config: Config) -> (Arc<Node>, Arc<Faulty>) {
        let slot: Arc<Mutex<Option<Arc<Faulty>>>> = Arc::default();
        let keep = slot.clone();
        let engine_config = config.clone();
        let node = Node::with_engine(config, move |hub: Arc<Hub>| {
            let f = Arc::new(Faulty {
                inner: MemoryEngine::new(hub, &engine_config),
                history_of: Mutex::new(None),
                publish_unknown: AtomicBool::new(false),
            });
            *keep.lock().unwrap_or_else(|p| p.into_inner()) = Some(f.clone());
            f
        })
        .expect("node");
        let faulty = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("engine made");
        (node, faulty)
    }

    fn fail_history_of(&self, room: Option<&str>) {
        *self.history_of.lock().unwrap_or_else(|p| p.into_inner()) = room.map(Into::into);
    }
}

#[async_trait]
impl Broker for Faulty {
    async fn publish(&self, msg: Publish) -> Result<Published, EngineError> {
        if self.publish_unknown.load(Ordering::Relaxed) {
            return Err(EngineError::UnknownOutcome("no answer in time".into()));
        }
        self.inner.publish(msg).await
    }
    async fn subscribe(&self, room: &str) -> Result<(), EngineError> {
        self.inner.subscribe(room).await
    }
    async fn unsubscribe(&self, room: &str) -> Result<(), EngineError> {
        self.inner.unsubscribe(room).await
    }
}

#[async_trait]
impl History for Faulty {
    async fn history(&self, room: &str, q: HistoryQuery) -> Result<HistoryPage, EngineError> {
        let failing = self
            .history_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if failing.as_deref() == Some(room) {
            return Err(EngineError::Unavailable("injected".into()));
        }
        self.inner.history(room, q).await
    }
}

#[async_trait]
impl PresenceManager for Faulty {
    async fn presence_join(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        self.inner.presence_join(room, user, conn).await
    }
    async fn presence_leave(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        self.inner.presence_leave(room, user, conn).await
    }
    async fn presence(&self, room: &str) -> Result<Vec<String>, EngineError> {
        self.inner.presence(room).await
    }
    async fn is_present(&self, room: &str, user: &str) -> Result<bool, EngineError> {
        self.inner.is_present(room, user).await
    }
    async fn active_rooms(&self, limit: usize) -> Result<Vec<(String, usize)>, EngineError> {
        self.inner.active_rooms(limit).await
    }
}

#[async_trait]
impl Sessions for Faulty {
    async fn save_session(&self, token: &str, s: &SessionRecord) -> Result<(), EngineError> {
        self.inner.save_session(token, s).await
    }
    async fn take_session(&self, token: &str) -> Result<Option<SessionRecord>, EngineError> {
        self.inner.take_session(token).await
    }
    async fn inbox_cursor(&self, user: &str) -> Result<Option<StreamPosition>, EngineError> {
        self.inner.inbox_cursor(user).await
    }
    async fn ack_inbox(&self, user: &str, at: &StreamPosition) -> Result<(), EngineError> {
        self.inner.ack_inbox(user, at).await
    }
}

#[async_trait]
impl Nodes for Faulty {
    async fn report_node(&self, r: &NodeReport) -> Result<(), EngineError> {
        self.inner.report_node(r).await
    }
    async fn nodes(&self) -> Result<Vec<NodeReport>, EngineError> {
        self.inner.nodes().await
    }
    async fn admit(&self, rate: u32) -> Result<Option<bool>, EngineError> {
        self.inner.admit(rate).await
    }
}

#[async_trait]
impl Engine for Faulty {
    fn healthy(&self) -> bool {
        true
    }
    async fn rewind_for_test(&self, room: &str, keep: Option<u64>) {
        self.inner.rewind_for_test(room, keep).await
    }
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
