//! The handlers' resume path against the memory engine, without sockets: the inbox held
//! back until `resume` decides, positions merged from the stored session and the client,
//! a closed session's rooms restored, another user's token refused.

use super::catchup::merge_positions;
use super::session::SAVE_DELAY;
use super::tests::*;
use crate::engine::{SessionRecord, TakenSession};
use crate::protocol::{Since, StreamPosition};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[tokio::test]
async fn the_inbox_waits_for_resume_and_any_other_command_replays_it_first() {
    let mut h = Harness::fresh("alice").await;
    h.publish("user:alice", "bob", "d1").await;
    h.publish("user:alice", "bob", "d2").await;
    let held = h.drain();
    assert_eq!(
        held,
        [
            Item::Msg("user:alice".into(), 1),
            Item::Msg("user:alice".into(), 2)
        ],
        "live DMs queue behind the hold"
    );
    h.cmd(json!({"type": "ping", "id": 1})).await;
    let items = h.drain();
    assert_eq!(
        items[0],
        Item::Replay("user:alice".into(), 0, vec![1, 2]),
        "inbox replay from the cursor first"
    );
    assert_eq!(items[1], Item::Release("user:alice".into()));
    assert!(matches!(&items[2], Item::Frame(f) if f["pong"] == true));
    // A resume now comes too late for the inbox.
    h.cmd(json!({"type": "resume", "id": 2, "resume_token": "t", "positions": {"user:alice": 0}}))
        .await;
    let reply = h.reply();
    assert_eq!(
        reply["rooms"]["user:alice"],
        json!({"recovered": false, "reason": "resume came too late"})
    );
}

#[tokio::test]
async fn resume_replays_the_inbox_from_the_clients_position() {
    let mut h = Harness::fresh("alice").await;
    h.publish("user:alice", "bob", "d1").await;
    h.publish("user:alice", "bob", "d2").await;
    h.drain();
    let epoch = h.epoch("user:alice").await;
    h.cmd(json!({"type": "resume", "id": 1, "resume_token": "t", "positions": {"user:alice": {"seq": 1, "epoch": &*epoch}}}))
        .await;
    let items = h.drain();
    assert_eq!(
        items[0],
        Item::Frame(
            json!({"type": "ok", "ref": 1, "rooms": {"user:alice": {"recovered": true, "epoch": &*epoch, "seq": 2}}})
        )
    );
    assert_eq!(items[1], Item::Replay("user:alice".into(), 1, vec![2]));
    assert_eq!(items[2], Item::Release("user:alice".into()));
    assert_eq!(items.len(), 3, "{items:?}");
}

#[tokio::test]
async fn resume_restores_a_closed_sessions_rooms_on_a_new_connection() {
    let mut a = Harness::new("alice").await;
    a.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
    a.publish("r", "bob", "m1").await;
    a.drain();
    let token = a.session.resume_token.to_string();
    // The writer wrote seq 1 of r before the socket closed.
    let epoch = a.epoch("r").await;
    let written = HashMap::from([(Arc::from("r"), StreamPosition::new(epoch.clone(), 1))]);
    a.session.close(&written).await;
    a.publish("r", "bob", "m2").await;

    let mut b = Harness::on(a.node.clone(), "alice").await; // inbox still pending
    b.cmd(json!({"type": "resume", "id": 5, "resume_token": token}))
        .await;
    let items = b.drain();
    let reply = items
        .iter()
        .find_map(|i| match i {
            Item::Frame(f) if f["type"] == "ok" => Some(f.clone()),
            _ => None,
        })
        .expect("ok");
    assert_eq!(
        reply["rooms"]["r"],
        json!({"recovered": true, "epoch": &*epoch, "seq": 2})
    );
    assert_eq!(
        items[items.len() - 2..],
        [
            Item::Replay("r".into(), 1, vec![2]),
            Item::Release("r".into())
        ],
        "{items:?}"
    );
    assert!(b.session.rooms.contains_key("r"));
    assert_eq!(
        b.node.engine.presence("r").await.expect("presence"),
        ["alice"]
    );

    // The token is used up.
    let mut c = Harness::on(a.node.clone(), "alice").await;
    c.cmd(json!({"type": "resume", "id": 6, "resume_token": token}))
        .await;
    assert_eq!(error_code(&c.reply()), "session_not_found");
}

#[tokio::test]
async fn another_users_token_is_refused_and_left_in_place() {
    let h = Harness::new("alice").await;
    let record = no_rooms("bob");
    h.node
        .engine
        .save_session("bobs", &record)
        .await
        .expect("save");
    let mut h = h;
    h.cmd(json!({"type": "resume", "id": 1, "resume_token": "bobs"}))
        .await;
    let items = h.drain();
    assert!(
        matches!(items.last(), Some(Item::Frame(f)) if f["code"] == "forbidden"),
        "{items:?}"
    );
    let take = |user| h.node.engine.take_session("bobs", user);
    assert_eq!(take("alice").await.expect("take"), TakenSession::OtherUsers);
    assert_eq!(
        take("bob").await.expect("take"),
        TakenSession::Taken(record)
    );
}

/// More positions than a connection's rooms and its inbox (2 + 1 here) are refused before
/// the stored session is taken: each would cost a join decision (a backend hook call).
#[tokio::test]
async fn a_resume_naming_more_rooms_than_a_connection_holds_is_refused() {
    let mut h = Harness::new("alice").await;
    let record = no_rooms("alice");
    h.node
        .engine
        .save_session("t", &record)
        .await
        .expect("save");
    let positions: BTreeMap<String, u64> = (0..4).map(|i| (format!("r{i}"), 0)).collect();
    h.cmd(json!({"type": "resume", "id": 1, "resume_token": "t", "positions": positions}))
        .await;
    let reply = h.reply();
    assert_eq!(error_code(&reply), "bad_request");
    assert!(reply["message"]
        .as_str()
        .is_some_and(|m| m.contains("at most 3 positions")));
    let kept = h
        .node
        .engine
        .take_session("t", "alice")
        .await
        .expect("take");
    assert_eq!(kept, TakenSession::Taken(record), "the token stays good");
}

/// One resume per connection: each catches up every room it names again, so a second is
/// refused before it takes anything, and the token it names stays good.
#[tokio::test]
async fn a_second_resume_on_one_connection_is_refused() {
    let mut h = Harness::new("alice").await;
    // Refused before any room: that one may be tried again.
    h.cmd(json!({"type": "resume", "id": 9, "resume_token": "none"}))
        .await;
    assert_eq!(error_code(&h.reply_of(9)), "session_not_found");
    let positions = json!({"r": 0});
    h.cmd(json!({"type": "resume", "id": 1, "resume_token": "none", "positions": positions}))
        .await;
    assert_eq!(h.reply_of(1)["type"], "ok");
    let record = no_rooms("alice");
    let engine = h.node.engine.clone();
    engine.save_session("t", &record).await.expect("save");
    h.cmd(json!({"type": "resume", "id": 2, "resume_token": "t"}))
        .await;
    let reply = h.reply_of(2);
    assert_eq!(error_code(&reply), "bad_request", "{reply}");
    let kept = engine.take_session("t", "alice").await.expect("take");
    assert_eq!(kept, TakenSession::Taken(record), "the token stays good");
}

/// A stored session of `user` without rooms.
fn no_rooms(user: &str) -> SessionRecord {
    SessionRecord {
        user: user.into(),
        node: "n".into(),
        rooms: BTreeMap::new(),
        connected_at: 0,
        last_seen: 0,
        grants: BTreeMap::new(),
        open: false,
    }
}

/// The rooms of the session record saved under `token`.
async fn saved_rooms(h: &Harness, token: &str) -> Option<Vec<String>> {
    let record = h.node.engine.peek_session_for_test(token).await;
    record.map(|r| r.rooms.into_keys().collect())
}

#[tokio::test]
async fn joins_and_leaves_are_saved_once_a_moment_later_and_a_close_saves_at_once() {
    let mut a = Harness::new("alice").await;
    let token = a.session.resume_token.to_string();
    let delay = SAVE_DELAY.as_millis() as u64;
    let before = crate::engine::now_ms();
    a.cmd(json!({"type": "join", "id": 1, "room": "r1"})).await;
    let after = crate::engine::now_ms();
    a.cmd(json!({"type": "join", "id": 2, "room": "r2"})).await;
    a.cmd(json!({"type": "leave", "id": 3, "room": "r2"})).await;
    assert_eq!(saved_rooms(&a, &token).await, None, "nothing saved yet");
    let due = a.session.next_deadline().expect("a save is due");
    assert!(
        (before + delay..=after + delay).contains(&due),
        "due {due}: the first join's time plus {delay} ms, not put off by what followed"
    );
    assert_eq!(a.session.on_deadline(due - 1).await, None);
    assert_eq!(saved_rooms(&a, &token).await, None, "not due yet");
    assert_eq!(a.session.on_deadline(due).await, None);
    assert_eq!(
        saved_rooms(&a, &token).await,
        Some(vec!["r1".into(), "user:alice".into()]),
        "one save for the three changes (and the inbox's acknowledged position)"
    );
    assert_eq!(a.session.next_deadline(), None, "nothing more to save");

    // A close saves at once, whatever is due.
    a.cmd(json!({"type": "join", "id": 4, "room": "r3"})).await;
    assert!(a.session.next_deadline().is_some());
    a.session.close(&HashMap::new()).await;
    assert_eq!(
        saved_rooms(&a, &token).await,
        Some(vec!["r1".into(), "r3".into(), "user:alice".into()])
    );
}

#[test]
fn resume_positions_merge_stored_and_client_ones() {
    let stored = SessionRecord {
        user: "u".into(),
        node: "n".into(),
        rooms: BTreeMap::from([
            ("a".to_string(), StreamPosition::new("e1", 5)),
            ("b".to_string(), StreamPosition::new("e2", 7)),
        ]),
        connected_at: 0,
        last_seen: 0,
        grants: BTreeMap::new(),
        open: false,
    };
    let client = BTreeMap::from([
        (
            "a".to_string(),
            Since {
                seq: 3,
                epoch: None,
            },
        ),
        (
            "c".to_string(),
            Since {
                seq: 2,
                epoch: Some("x".into()),
            },
        ),
    ]);
    let merged = merge_positions(Some(&stored), client.clone());
    assert_eq!(
        merged,
        BTreeMap::from([
            (
                "a".to_string(),
                Since {
                    seq: 3,
                    epoch: Some("e1".into())
                }
            ),
            ("b".to_string(), StreamPosition::new("e2", 7).into()),
            (
                "c".to_string(),
                Since {
                    seq: 2,
                    epoch: Some("x".into())
                }
            ),
        ]),
        "the client's seq wins and keeps the stored epoch; stored rooms stay"
    );
    assert_eq!(merge_positions(None, client.clone()), client);
}

/// A user's ended sessions past `sessions.keptPerUser` are dropped from the store, oldest
/// first; one resumed here no longer counts, and another user's are not touched.
#[tokio::test]
async fn a_user_keeps_at_most_kept_per_user_ended_sessions() {
    let mut c = config();
    c.sessions.kept_per_user = 2;
    let node = crate::node::Node::new(c, Default::default()).expect("node");
    async fn end(node: &Arc<crate::node::Node>, user: &str) -> String {
        let mut h = Harness::on(node.clone(), user).await;
        h.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
        let token = h.session.resume_token.to_string();
        h.session.close(&HashMap::new()).await;
        token
    }
    let m0 = end(&node, "mallory").await;
    let m1 = end(&node, "mallory").await;
    let a0 = end(&node, "alice").await;
    let m2 = end(&node, "mallory").await;
    let dropped = || node.metrics.sessions_dropped.get();
    assert_eq!(dropped(), 1, "the third of mallory's drops the first");

    // m1 resumed here: mallory's ended sessions are m2 and, after one more, m3.
    let mut back = Harness::on(node.clone(), "mallory").await;
    back.cmd(json!({"type": "resume", "id": 1, "resume_token": m1}))
        .await;
    assert_eq!(back.reply_of(1)["type"], "ok");
    let m3 = end(&node, "mallory").await;
    assert_eq!(dropped(), 1, "a resumed session does not count");

    let stored = |t: String, user: &'static str| {
        let node = node.clone();
        async move { node.engine.take_session(&t, user).await.expect("take") != TakenSession::Missing }
    };
    assert!(!stored(m0, "mallory").await, "dropped");
    assert!(
        stored(m2, "mallory").await && stored(m3, "mallory").await && stored(a0, "alice").await
    );
}

/// A connection whose session a resume took while it was still open (its client came back
/// on another connection before this one's end was seen: a half-open socket) stores
/// nothing at its close. The old token resumes once, and it is not one of the user's
/// ended sessions (`sessions.keptPerUser`) either.
#[tokio::test]
async fn a_close_after_a_resume_took_its_session_stores_nothing() {
    let mut c = config();
    c.sessions.kept_per_user = 1;
    let node = crate::node::Node::new(c, Default::default()).expect("node");
    let mut old = Harness::on(node.clone(), "alice").await;
    old.cmd(json!({"type": "join", "id": 1, "room": "r1"}))
        .await;
    let due = old.session.next_deadline().expect("the join's save");
    assert_eq!(old.session.on_deadline(due).await, None);
    let token = old.session.resume_token.to_string();

    let mut back = Harness::on(node.clone(), "alice").await;
    back.cmd(json!({"type": "resume", "id": 1, "resume_token": token}))
        .await;
    assert_eq!(back.reply_of(1)["type"], "ok");
    old.session.close(&HashMap::new()).await;
    let left = node.engine.peek_session_for_test(&token).await;
    assert_eq!(
        left, None,
        "the old connection's close stored its session again"
    );
    let mut again = Harness::on(node.clone(), "alice").await;
    again
        .cmd(json!({"type": "resume", "id": 2, "resume_token": token}))
        .await;
    assert_eq!(error_code(&again.reply()), "session_not_found");

    // alice's one ended session is the next one to end, not the spent token.
    back.session.close(&HashMap::new()).await;
    assert_eq!(node.metrics.sessions_dropped.get(), 0);
}
