//! The command handlers against the memory engine, without sockets: what each command
//! queues, in which order, and each refusal.

use super::run_command;
use super::session::Session;
use crate::config::{AuthMode, Config};
use crate::engine::Publish;
use crate::node::Node;
use crate::outbound::{self, Outbound, OutboundReceiver};
use serde_json::{json, Value};
use std::sync::Arc;

/// One queued item, simplified for assertions.
#[derive(Debug, PartialEq)]
pub(super) enum Item {
    Frame(Value),
    Msg(String, u64),
    Hold(String),
    Replay(String, u64, Vec<u64>),
    Release(String),
    Forget(String),
    Close(u16),
    Flush,
    Ping,
}

pub(super) fn simplify(item: Outbound) -> Item {
    match item {
        Outbound::Frame(f) => Item::Frame(serde_json::from_str(&f).expect("frame is JSON")),
        Outbound::Msg(e) => Item::Msg(e.room.to_string(), e.seq),
        Outbound::BeginCatchup(r) => Item::Hold(r.to_string()),
        Outbound::Replay { room, from, msgs } => Item::Replay(
            room.to_string(),
            from.seq,
            msgs.iter().map(|m| m.seq).collect(),
        ),
        Outbound::Release(r) => Item::Release(r.to_string()),
        Outbound::Forget(r) => Item::Forget(r.to_string()),
        Outbound::Close(c) => Item::Close(c.code),
        Outbound::Flush => Item::Flush,
        Outbound::Ping => Item::Ping,
    }
}

pub(super) struct Harness {
    pub(super) node: Arc<Node>,
    pub(super) session: Session,
    pub(super) rx: OutboundReceiver,
}

impl Harness {
    /// The room's current epoch in the engine.
    pub(super) async fn epoch(&self, room: &str) -> Arc<str> {
        let page = self.node.engine.history(room, Default::default()).await;
        page.expect("page").epoch
    }

    /// A connection whose inbox replay already happened (a `ping` went first).
    pub(super) async fn new(user: &str) -> Harness {
        let mut h = Harness::fresh(user).await;
        h.cmd(json!({"type": "ping", "id": 0})).await;
        h.drain();
        h
    }

    /// A connection right after `welcome`: its inbox replay is still pending.
    pub(super) async fn fresh(user: &str) -> Harness {
        Harness::on(Node::new(config(), Default::default()).expect("node"), user).await
    }

    /// A second connection on the same node.
    pub(super) async fn on(node: Arc<Node>, user: &str) -> Harness {
        let (queue, rx) = outbound::queue(1024, 1 << 20);
        let token = super::session::Hex::random();
        let ctl = Some(Arc::new(crate::control::ConnCtl::new(token)));
        let id = node.register(queue.clone(), user, ctl);
        let identity = crate::auth::Identity {
            user: user.into(),
            ..Default::default()
        };
        let mut session = Session::new(node.clone(), id, identity, queue.clone(), token);
        let joined = session.welcome(Default::default()).await;
        assert!(joined.is_empty(), "no connect hook, no rooms");
        let mut h = Harness { node, session, rx };
        let welcome = h.drain();
        assert_eq!(welcome.len(), 2, "{welcome:?}");
        assert!(matches!(&welcome[0], Item::Frame(f) if f["type"] == "welcome"));
        assert_eq!(welcome[1], Item::Hold(crate::protocol::inbox_of(user)));
        h
    }

    /// Runs a command and queues what it produced (as the socket loop does); returns
    /// whether it counted as a client error.
    pub(super) async fn cmd(&mut self, cmd: Value) -> bool {
        let (fault, steps) = run_command(&mut self.session, &cmd.to_string()).await;
        self.session.deliver(steps).await;
        fault
    }

    /// Everything queued since the last drain, except presence pushes.
    pub(super) fn drain(&mut self) -> Vec<Item> {
        std::iter::from_fn(|| self.rx.try_recv_for_test())
            .map(simplify)
            .filter(|i| !matches!(i, Item::Frame(f) if f["type"] == "presence"))
            .collect()
    }

    /// The reply to command `id` among what was queued since the last drain.
    pub(super) fn reply_of(&mut self, id: u64) -> Value {
        let items = self.drain();
        items
            .iter()
            .find_map(|i| match i {
                Item::Frame(f) if f["ref"] == id => Some(f.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no reply to {id}: {items:?}"))
    }

    /// The only frame queued since the last drain, which must be a reply.
    pub(super) fn reply(&mut self) -> Value {
        let items = self.drain();
        match items.as_slice() {
            [Item::Frame(f)] => f.clone(),
            other => panic!("expected one reply, got {other:?}"),
        }
    }

    pub(super) async fn publish(&self, room: &str, from: &str, msg_id: &str) -> u64 {
        let body = serde_json::value::to_raw_value(&json!("hi")).expect("raw");
        self.node
            .engine
            .publish(Publish {
                room: room.into(),
                from: from.into(),
                msg_id: msg_id.into(),
                body,
                traceparent: None,
            })
            .await
            .expect("publish")
            .at
            .seq
    }
}

/// The harness's configuration: insecure auth, two rooms per connection.
pub(super) fn config() -> Config {
    let mut config = Config::default();
    config.auth.mode = AuthMode::Insecure;
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.limits.rooms_per_connection = 2;
    config
}

pub(super) fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "{reply}");
    reply["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn join_reply_goes_out_before_its_replay() {
    let mut h = Harness::new("alice").await;
    for i in 0..3 {
        h.publish("r", "bob", &format!("m{i}")).await;
    }
    let epoch = h.epoch("r").await;
    assert!(
        !h.cmd(json!({"type": "join", "id": 1, "room": "r", "since": 1, "epoch": &*epoch}))
            .await
    );
    let items = h.drain();
    assert_eq!(items.len(), 4, "{items:?}");
    assert_eq!(
        items[0],
        Item::Hold("r".into()),
        "live messages of r are held first"
    );
    assert_eq!(
        items[1],
        Item::Frame(
            json!({"type": "ok", "ref": 1, "room": "r", "epoch": &*epoch, "seq": 3, "recovered": true})
        )
    );
    assert_eq!(items[2], Item::Replay("r".into(), 1, vec![2, 3]));
    assert_eq!(items[3], Item::Release("r".into()), "then the live ones");
}

#[tokio::test]
async fn join_without_since_replays_nothing_and_a_stale_epoch_is_not_recovered() {
    let mut h = Harness::new("alice").await;
    h.publish("r", "bob", "m1").await;
    h.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
    let items = h.drain();
    assert!(matches!(&items[1], Item::Frame(f) if f.get("recovered").is_none() && f["seq"] == 1));
    assert_eq!(items[2], Item::Replay("r".into(), 1, vec![]));
    assert_eq!(items[3], Item::Release("r".into()));

    h.publish("s", "bob", "m1").await;
    h.publish("s", "bob", "m2").await;
    h.cmd(json!({"type": "join", "id": 2, "room": "s", "since": 1, "epoch": "gone"}))
        .await;
    let items = h.drain();
    assert!(
        matches!(&items[1], Item::Frame(f) if f["recovered"] == false),
        "{items:?}"
    );
    assert_eq!(
        items[2],
        Item::Replay("s".into(), 2, vec![]),
        "nothing replayed"
    );
    // Seq 0 has seen nothing: any epoch covers it.
    h.cmd(json!({"type": "leave", "id": 3, "room": "s"})).await;
    h.cmd(json!({"type": "join", "id": 4, "room": "s", "since": 0, "epoch": "gone"}))
        .await;
    let items = h.drain();
    assert!(
        items
            .iter()
            .any(|i| matches!(i, Item::Frame(f) if f["recovered"] == true)),
        "{items:?}"
    );
    assert!(
        items.contains(&Item::Replay("s".into(), 0, vec![1, 2])),
        "{items:?}"
    );
}

/// Identity providers' user ids carry `|` (Auth0: `auth0|…`, `google-oauth2|…`) and `+`
/// (e-mail addresses): their inboxes take DMs, and their owners read them.
#[tokio::test]
async fn users_whose_ids_carry_a_bar_or_a_plus_get_direct_messages() {
    let mut alice = Harness::new("alice").await;
    let mut bob = Harness::on(alice.node.clone(), "auth0|bob").await;
    bob.cmd(json!({"type": "ping", "id": 0})).await;
    bob.drain();
    for (id, to) in [(1, "user:auth0|bob"), (2, "user:ann+chat@example.com")] {
        alice
            .cmd(json!({"type": "send", "id": id, "room": to, "body": "hi"}))
            .await;
        assert_eq!(alice.reply_of(id)["type"], "ok", "{to}");
    }
    bob.cmd(json!({"type": "history", "id": 3, "room": "user:auth0|bob"}))
        .await;
    let page = bob.reply_of(3);
    assert_eq!(page["messages"][0]["body"], "hi", "{page}");
}

/// User ids outside the room-name characters (a space, non-ASCII, a directory's
/// `CN=…,OU=…`) get DMs at their inbox written with `%XX` escapes, live and in history;
/// the same id escaped another way names no inbox.
#[tokio::test]
async fn users_whose_ids_need_escapes_get_direct_messages_at_the_escaped_inbox() {
    let mut alice = Harness::new("alice").await;
    for (user, inbox) in [
        ("zoë a", "user:zo%C3%AB%20a"),
        ("CN=Ann,OU=x", "user:CN%3DAnn%2COU%3Dx"),
    ] {
        let mut to = Harness::on(alice.node.clone(), user).await;
        to.cmd(json!({"type": "ping", "id": 0})).await;
        to.drain();
        alice
            .cmd(json!({"type": "send", "id": 1, "room": inbox, "body": "hi"}))
            .await;
        assert_eq!(alice.reply_of(1)["type"], "ok", "{inbox}");
        let live = to.drain();
        assert!(live.contains(&Item::Msg(inbox.into(), 1)), "{live:?}");
        to.cmd(json!({"type": "history", "id": 2, "room": inbox}))
            .await;
        let page = to.reply_of(2);
        assert_eq!(page["messages"][0]["body"], "hi", "{page}");
    }
    let lowercase = json!({"type": "send", "id": 3, "room": "user:zo%c3%ab%20a", "body": 1});
    alice.cmd(lowercase).await;
    assert_eq!(error_code(&alice.reply_of(3)), "invalid_room");
}

#[tokio::test]
async fn every_refusal_has_its_code_and_counts_as_a_client_error() {
    let mut h = Harness::new("alice").await;
    let cases = [
        (
            json!({"type": "join", "id": 1, "room": "bad room"}),
            "invalid_room",
        ),
        (
            json!({"type": "join", "id": 2, "room": "user:bob"}),
            "forbidden",
        ),
        (json!({"type": "leave", "id": 3, "room": "r"}), "not_joined"),
        (
            json!({"type": "send", "id": 4, "room": "r", "body": 1}),
            "not_joined",
        ),
        (
            json!({"type": "presence", "id": 5, "room": "r"}),
            "not_joined",
        ),
        (
            json!({"type": "history", "id": 6, "room": "user:bob"}),
            "forbidden",
        ),
        (
            json!({"type": "send", "id": 7, "room": "user:", "body": 1}),
            "invalid_room",
        ),
        (
            json!({"type": "send", "id": 8, "room": "user:bob", "body": 1, "msg_id": ""}),
            "bad_request",
        ),
        (
            json!({"type": "resume", "id": 9, "resume_token": "nope"}),
            "session_not_found",
        ),
        (json!({"type": "dance", "id": 10}), "unknown_command"),
    ];
    for (cmd, code) in cases {
        let id = cmd["id"].clone();
        assert!(h.cmd(cmd.clone()).await, "{cmd} counts as a client error");
        let reply = h.reply();
        assert_eq!(error_code(&reply), code, "{cmd}");
        assert_eq!(reply["ref"], id, "{cmd}");
    }
    // Room limit (2 in this harness) and a second join of the same room.
    for (id, room) in [(20, "a"), (21, "b")] {
        h.cmd(json!({"type": "join", "id": id, "room": room})).await;
        h.drain();
    }
    h.cmd(json!({"type": "join", "id": 22, "room": "a"})).await;
    assert_eq!(error_code(&h.reply()), "bad_request");
    h.cmd(json!({"type": "join", "id": 23, "room": "c"})).await;
    let items = h.drain();
    assert!(
        matches!(items.last(), Some(Item::Frame(f)) if f["code"] == "too_many_rooms"),
        "{items:?}"
    );
    assert!(
        !items.iter().any(|i| *i == Item::Hold("c".into())),
        "nothing of c is left"
    );
}

#[tokio::test]
async fn a_repeated_msg_id_gets_the_original_seq_and_is_stored_once() {
    let mut h = Harness::new("alice").await;
    h.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
    h.drain();
    let send = json!({"type": "send", "id": 2, "room": "r", "msg_id": "x", "body": {"t": 1}});
    assert!(!h.cmd(send.clone()).await);
    let first: Vec<Item> = h.drain();
    let Some(Item::Frame(first)) = first.into_iter().find(|i| matches!(i, Item::Frame(_))) else {
        panic!("no reply")
    };
    assert!(first.get("duplicate").is_none());
    assert!(!h.cmd(send).await);
    let again = h.reply();
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].clone()),
        (first["seq"].clone(), json!(true))
    );
    let page = h
        .node
        .engine
        .history(
            "r",
            crate::engine::HistoryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(page.messages.len(), 1);
}

#[test]
fn a_session_id_shows_as_lowercase_hex_of_its_bytes() {
    let id = super::session::Hex([0x00, 0x0f, 0xa0, 0xff]);
    assert_eq!(id.to_string(), "000fa0ff");
    let token = super::session::Hex::<16>::random();
    assert_eq!(token.to_string().len(), 32);
    assert_ne!(token, super::session::Hex::<16>::random(), "random");
}

#[test]
fn a_token_reads_back_from_its_hex_and_nothing_else_does() {
    use super::session::Hex;
    let token = Hex::<16>::random();
    assert_eq!(Hex::<16>::parse(&token.to_string()), Some(token));
    assert_eq!(
        Hex::<4>::parse("000FA0ff"),
        Some(Hex([0x00, 0x0f, 0xa0, 0xff]))
    );
    for bad in ["", "000fa0f", "000fa0fff", "000fa0fg", "+00fa0ff", "00é0ff"] {
        assert_eq!(Hex::<4>::parse(bad), None, "{bad:?}");
    }
}

/// A connection is unregistered with its slots, also when its task panics: the open
/// connections gauge (what the HPA reads) and the drain's count do not keep it for good.
#[tokio::test]
async fn a_panicking_connection_task_is_unregistered() {
    let node = Node::new(config(), Default::default()).expect("node");
    let (queue, _rx) = outbound::queue(8, 1024);
    let mut slots = crate::node::Slots {
        ip: node.take_ip_slot([127, 0, 0, 1].into()).expect("ip slot"),
        user: node.take_user_slot("u").expect("user slot"),
        registered: None,
    };
    slots.registered = Some(node.register(queue, "u", None));
    assert_eq!(node.connection_count(), 1);
    let task = tokio::spawn(async move {
        let _slots = slots;
        panic!("a bug in a connection's task");
    });
    assert!(task.await.is_err(), "the task panicked");
    assert_eq!(node.connection_count(), 0);
    assert_eq!(node.metrics.connections.get(), 0);
    assert!(
        node.take_user_slot("u").is_some(),
        "its slots are free again"
    );
}

/// `history` with `limit: 0`: the room's top and first, no message, and whether the range
/// holds any (the engines answered it differently; the handler asks them for one).
#[tokio::test]
async fn a_history_of_limit_zero_says_whether_there_is_more_without_messages() {
    let mut h = Harness::new("alice").await;
    h.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
    h.cmd(json!({"type": "join", "id": 2, "room": "empty"}))
        .await;
    for i in 0..3 {
        h.cmd(json!({"type": "send", "id": 10 + i, "room": "r", "body": i}))
            .await;
    }
    h.drain();
    let cases = [
        (None, "r", true, 3),
        (Some(2), "r", true, 3),
        (Some(3), "r", false, 3),
        (None, "empty", false, 0),
    ];
    for (since, room, more, top) in cases {
        let mut cmd = json!({"type": "history", "id": 20, "room": room, "limit": 0});
        if let Some(since) = since {
            cmd["since"] = json!(since);
        }
        h.cmd(cmd).await;
        let page = h.reply();
        let case = format!("{room} since {since:?}: {page}");
        assert_eq!(page["messages"], json!([]), "{case}");
        assert_eq!(page["more"], more, "{case}");
        assert_eq!(page["top"], top, "{case}");
    }
}
