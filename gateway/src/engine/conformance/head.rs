//! A head an engine hands back instead of the caller reading it (see
//! [`Broker::subscribe`](crate::engine::Broker) and [`Engine::enter`](crate::engine::Engine)):
//! the room's epoch, top and first retained seq as history reports them, no messages,
//! and every message after it delivered live.

use super::{config, publish, take, Factory};
use crate::engine::{Engine, HistoryPage, HistoryQuery};
use crate::hub::Hub;
use crate::outbound::{queue, Outbound, OutboundReceiver};
use std::sync::Arc;

/// Publishes `n` messages to `room`.
async fn fill(engine: &dyn Engine, room: &str, n: usize) {
    for i in 0..n {
        let msg = publish(room, "alice", &format!("{room}-{i}"), "1");
        engine.publish(msg).await.expect("publish");
    }
}

/// A head handed back, if any, is the one history reports now, with 7 messages published.
async fn check_head(engine: &dyn Engine, room: &str, head: Option<HistoryPage>) {
    let now = engine
        .history(room, HistoryQuery::default())
        .await
        .expect("history");
    if let Some(head) = head {
        assert_eq!(
            (&*head.epoch, head.top, head.first),
            (&*now.epoch, 7, now.first),
            "{room}"
        );
        assert!(head.messages.is_empty(), "{room}: a head has no messages");
    }
}

/// The next message (seq 8) is delivered live. Messages from before the head may come
/// first (in flight when the subscription started; connections drop them by seq).
async fn next_is_live(engine: &dyn Engine, rx: &mut OutboundReceiver, room: &str) {
    engine
        .publish(publish(room, "alice", &format!("{room}-live"), "1"))
        .await
        .expect("publish");
    let mut before = Vec::new();
    let live = loop {
        match take(rx, 1).await.pop() {
            Some(Outbound::Msg(m)) if m.seq <= 7 && before.len() < 7 => before.push(m.seq),
            Some(Outbound::Msg(m)) => break Some(m.seq),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(
        live,
        Some(8),
        "{room}: the next message is live (after {before:?})"
    );
}

pub(super) async fn a_head_handed_back_is_the_rooms_head(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    // An inbox (the Redis engine hands back an inbox's head as it subscribes) and a room
    // (its head comes with the presence entry).
    for room in ["user:head", "r-head"] {
        fill(&*engine, room, 7).await;
        let (q, mut rx) = queue(100, 1 << 20);
        hub.subscribe(&Arc::from(room), 1, q);
        let head = engine.subscribe(room).await.expect("subscribe");
        check_head(&*engine, room, head).await;
        if room == "r-head" {
            let head = engine.enter(room, "bob", "n/1.1").await.expect("enter");
            check_head(&*engine, room, head).await;
            let present = engine.presence(room).await.expect("presence");
            assert_eq!(present, ["bob"], "entering marks presence");
        }
        next_is_live(&*engine, &mut rx, room).await;
    }
}
