//! A head a subscription hands back (see [`Broker::subscribe`](crate::engine::Broker)):
//! the room's epoch, top and first retained seq as history reports them, no messages, and
//! every message after it delivered live.

use super::{config, publish, take, Factory};
use crate::engine::HistoryQuery;
use crate::hub::Hub;
use crate::outbound::{queue, Outbound};
use std::sync::Arc;

pub(super) async fn a_head_handed_back_is_the_rooms_head(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    // An inbox (the Redis engine hands back an inbox's head) and a room.
    for room in ["user:head", "r-head"] {
        for i in 0..7 {
            let msg = publish(room, "alice", &format!("{room}-{i}"), "1");
            engine.publish(msg).await.expect("publish");
        }
        let (q, mut rx) = queue(100, 1 << 20);
        hub.subscribe(&Arc::from(room), 1, q);
        let head = engine.subscribe(room).await.expect("subscribe");
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
        engine
            .publish(publish(room, "alice", &format!("{room}-live"), "1"))
            .await
            .expect("publish");
        // Messages from before the head may come too (in flight when the subscription
        // started; connections drop them by seq); the next one must.
        let mut before = Vec::new();
        let live = loop {
            match take(&mut rx, 1).await.pop() {
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
}
