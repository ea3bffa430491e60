//! What a session record names for a room a `resume` is replaying: where the client stood
//! until the writer reports delivering more. A connection that ends before a room's
//! replay reached the writer (a goaway, a drop, a 1013 during an earlier room's replay, a
//! node that dies after the resume's save) must resume from there, not from the top.

use super::tests::*;
use crate::engine::SessionRecord;
use crate::outbound;
use crate::protocol::StreamPosition;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_tungstenite::tungstenite::{Error, Message};

/// The record saved under `token`.
async fn saved(h: &Harness, token: &str) -> SessionRecord {
    let record = h.node.engine.peek_session_for_test(token).await;
    record.expect("a saved session")
}

/// Closes a session of alice's that had `r` up to seq 1, then publishes seqs 2 and 3;
/// returns its resume token and `r`'s epoch.
async fn known_at_one(a: &mut Harness) -> (String, Arc<str>) {
    a.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
    a.publish("r", "bob", "m1").await;
    a.drain();
    let epoch = a.epoch("r").await;
    let written = HashMap::from([(Arc::from("r"), StreamPosition::new(epoch.clone(), 1))]);
    let token = a.session.resume_token.to_string();
    a.session.close(&written).await;
    a.publish("r", "bob", "m2").await;
    a.publish("r", "bob", "m3").await;
    (token, epoch)
}

/// Runs `cmd` (a resume with id 1) on `b`; checks that `r` is recovered up to 3 and
/// returns what was queued.
async fn resume(b: &mut Harness, cmd: Value, epoch: &str) -> Vec<Item> {
    resume_says(b, cmd, epoch, true).await
}

/// [`resume`], the room `r` reported `recovered` as given.
async fn resume_says(b: &mut Harness, cmd: Value, epoch: &str, recovered: bool) -> Vec<Item> {
    b.cmd(cmd).await;
    let items = b.drain();
    let reply = items.iter().find_map(|i| match i {
        Item::Frame(f) if f["ref"] == 1 => Some(f),
        _ => None,
    });
    let r = json!({"recovered": recovered, "epoch": epoch, "seq": 3});
    assert_eq!(reply.map(|f| &f["rooms"]["r"]), Some(&r), "{items:?}");
    items
}

#[tokio::test]
async fn a_room_whose_replay_never_reached_the_writer_is_saved_where_the_client_stood() {
    let mut a = Harness::new("alice").await;
    let (token, epoch) = known_at_one(&mut a).await;
    let at_one = StreamPosition::new(epoch.clone(), 1);
    let from_session = json!({"type": "resume", "id": 1, "resume_token": token});
    let from_positions = json!({"type": "resume", "id": 1, "resume_token": "unknown",
        "positions": {"r": {"seq": 1, "epoch": &*epoch}}});
    for cmd in [from_session, from_positions] {
        let mut b = Harness::on(a.node.clone(), "alice").await;
        resume(&mut b, cmd.clone(), &epoch).await;
        let token = b.session.resume_token.to_string();
        // The resume's own save: what a node that dies mid-replay leaves.
        assert_eq!(saved(&b, &token).await.rooms["r"], at_one, "{cmd}");
        // Closed with r's replay queued but never written: the writer reports nothing.
        b.session.close(&HashMap::new()).await;
        let record = saved(&b, &token).await;
        assert_eq!(record.rooms["r"], at_one, "{cmd}");

        // So the next resume, without positions, still replays what the client never got.
        replays_from_one(&b, &token, &epoch, &cmd.to_string()).await;
    }
}

/// Resumes `token`'s saved session, token only, on a fresh connection: `r` is replayed
/// from 1 (seqs 2 and 3).
async fn replays_from_one(h: &Harness, token: &str, epoch: &str, why: &str) {
    let mut c = Harness::on(h.node.clone(), "alice").await;
    let again = json!({"type": "resume", "id": 1, "resume_token": token});
    let items = resume(&mut c, again, epoch).await;
    let replay = Item::Replay("r".into(), 1, vec![2, 3]);
    assert!(items.contains(&replay), "{why}: {items:?}");
}

/// A sink standing for the socket: every message written goes to the channel.
fn socket() -> (
    impl futures_util::Sink<Message, Error = Error> + Unpin,
    tokio::sync::mpsc::UnboundedReceiver<Message>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = futures_util::sink::unfold(tx, |tx, msg: Message| async move {
        let _ = tx.send(msg);
        Ok::<_, Error>(tx)
    });
    (Box::pin(sink), rx)
}

#[tokio::test]
async fn a_replay_the_writer_delivered_is_saved_at_what_it_delivered() {
    let mut a = Harness::new("alice").await;
    let (token, epoch) = known_at_one(&mut a).await;
    let mut b = Harness::on(a.node.clone(), "alice").await;
    // A real writer takes b's queue (the harness drains a queue nobody writes to).
    let (_unused, idle) = outbound::queue(1, 1);
    let rx = std::mem::replace(&mut b.rx, idle);
    let (sink, mut wire) = socket();
    let writer = tokio::spawn(outbound::run_writer(
        sink,
        rx,
        super::writer_settings(&b.node),
    ));
    b.cmd(json!({"type": "resume", "id": 1, "resume_token": token}))
        .await;
    assert_eq!(r_until_3(&mut wire).await, [2, 3], "the replay from 1");
    b.session.queue.stop();
    let outcome = writer.await.expect("writer");
    let token = b.session.resume_token.to_string();
    b.session.close(&outcome.positions).await;
    let at_three = StreamPosition::new(epoch, 3);
    assert_eq!(saved(&b, &token).await.rooms["r"], at_three);
}

/// Nothing to replay: a plain join stands at the top, and a resume naming a room the
/// connection already has up to a later seq keeps that seq. The gap below it is never
/// written on this connection: the room is reported `recovered: false` (before, `true`
/// with nothing replayed).
#[tokio::test]
async fn a_plain_join_and_a_room_already_had_are_saved_at_what_the_client_has() {
    let mut h = Harness::new("alice").await;
    for m in ["m1", "m2", "m3"] {
        h.publish("r", "bob", m).await;
    }
    let epoch = h.epoch("r").await;
    h.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
    h.drain();
    let at_three = StreamPosition::new(epoch.clone(), 3);
    assert_eq!(h.session.rooms["r"].at, at_three);
    let behind = json!({"type": "resume", "id": 1, "resume_token": "unknown",
        "positions": {"r": {"seq": 1, "epoch": &*epoch}}});
    resume_says(&mut h, behind, &epoch, false).await;
    assert_eq!(
        h.session.rooms["r"].at, at_three,
        "the client had 3 already"
    );
    let token = h.session.resume_token.to_string();
    h.session.close(&HashMap::new()).await;
    assert_eq!(saved(&h, &token).await.rooms["r"], at_three);
}

/// The seqs of `r`'s messages written to `frames`, up to seq 3.
async fn r_until_3(frames: &mut tokio::sync::mpsc::UnboundedReceiver<Message>) -> Vec<u64> {
    let mut seqs = Vec::new();
    while !seqs.contains(&3) {
        let Some(Message::Text(text)) = frames.recv().await else {
            panic!("the writer stopped before r's replay: {seqs:?}");
        };
        let frame: Value = serde_json::from_str(&text).expect("JSON");
        if frame["type"] == "msg" && frame["room"] == "r" {
            seqs.push(frame["seq"].as_u64().expect("seq"));
        }
    }
    seqs
}

/// A socket that takes every frame into its buffer but never gets them out (the client
/// stopped reading): a flush never completes.
struct Unflushed(tokio::sync::mpsc::UnboundedSender<Message>);

impl futures_util::Sink<Message> for Unflushed {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), Error> {
        let _ = self.0.send(msg);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Pending // never woken: the writer's timeouts end the wait
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Pending
    }
}

/// A replay the writer took but never got onto the socket (its flush was cut by the
/// close) is not saved as delivered: a resume with the token alone replays it.
#[tokio::test]
async fn a_replay_cut_off_before_the_socket_is_replayed_by_a_token_only_resume() {
    let mut a = Harness::new("alice").await;
    let (token, epoch) = known_at_one(&mut a).await;
    let mut b = Harness::on(a.node.clone(), "alice").await;
    // Queued before a writer starts: the writer takes the reply and r's replay in one batch.
    b.cmd(json!({"type": "resume", "id": 1, "resume_token": token}))
        .await;
    let (_unused, idle) = outbound::queue(1, 1);
    let rx = std::mem::replace(&mut b.rx, idle);
    let (tx, mut fed) = tokio::sync::mpsc::unbounded_channel();
    let settings = super::writer_settings(&b.node);
    let writer = tokio::spawn(outbound::run_writer(Unflushed(tx), rx, settings));
    assert_eq!(
        r_until_3(&mut fed).await,
        [2, 3],
        "handed to the socket's buffer, never flushed"
    );
    b.session.queue.close(crate::disconnect::DRAINING);
    let outcome = writer.await.expect("writer");
    let token = b.session.resume_token.to_string();
    b.session.close(&outcome.positions).await;
    let record = saved(&b, &token).await;
    assert_eq!(record.rooms["r"], StreamPosition::new(epoch.clone(), 1));
    replays_from_one(&b, &token, &epoch, "cut off").await;
}

/// A room the connect hook joined at welcome (at its top) resumed from an older
/// position: the writer stands past the gap and never writes below what it wrote, so
/// nothing of the gap would reach the client. Reported `recovered: false` (read the gap
/// with `history`); before, `recovered: true` with the missed messages never written.
#[tokio::test]
async fn a_connect_hook_room_resumed_from_behind_is_not_recovered() {
    let h = Harness::new("alice").await;
    for m in ["m1", "m2", "m3"] {
        h.publish("r", "bob", m).await;
    }
    let epoch = h.epoch("r").await;
    // Alice's next connection, whose connect hook put her in `r`.
    let (queue, rx) = outbound::queue(1024, 1 << 20);
    let id = h.node.register(queue.clone(), "alice", None);
    let identity = crate::auth::Identity {
        user: "alice".into(),
        ..Default::default()
    };
    let token = super::session::Hex::random();
    let mut session = super::session::Session::new(h.node.clone(), id, identity, queue, token);
    let answer = crate::hooks::ConnectAnswer {
        rooms: vec!["r".into()],
        data: None,
    };
    let joined = session.welcome(answer).await;
    let steps = joined.into_iter().map(super::Step::Replay).collect();
    session.deliver(steps).await;
    let mut b = Harness {
        node: h.node.clone(),
        session,
        rx,
    };
    b.drain();
    let behind = json!({"type": "resume", "id": 1, "resume_token": "unknown",
        "positions": {"r": {"seq": 1, "epoch": &*epoch}}});
    resume_says(&mut b, behind, &epoch, false).await;
}
