//! Conformance checks of issue 18: pages bounded by bytes, and the epoch rule (a store
//! behind what the node saw, or one that lost a room, never numbers on in the old epoch).

use super::{config, listen, publish, seqs, take, Factory};
use crate::engine::HistoryQuery;
use crate::hub::Hub;
use crate::outbound::Outbound;
use std::sync::Arc;

pub(super) async fn history_pages_by_bytes_and_says_more(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let mut c = config();
    c.history.max_messages = 100;
    let engine = f.make(hub.clone(), &c).await;
    let big = format!("\"{}\"", "x".repeat(1000));
    for i in 1..=10 {
        engine
            .publish(publish("r8", "a", &format!("m{i}"), &big))
            .await
            .expect("publish");
    }
    let q = |since, before| HistoryQuery {
        since,
        before,
        limit: 50,
        max_bytes: 3500,
    };
    let seqs =
        |p: &crate::engine::HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let newest = engine.history("r8", q(None, None)).await.expect("history");
    assert_eq!(seqs(&newest), [8, 9, 10], "three frames of ~1.1 kB fit");
    assert!(newest.more);
    let older = engine
        .history("r8", q(None, Some(8)))
        .await
        .expect("history");
    assert_eq!(seqs(&older), [5, 6, 7]);
    let forward = engine
        .history("r8", q(Some(6), None))
        .await
        .expect("history");
    assert_eq!(seqs(&forward), [7, 8, 9]);
    assert!(forward.more);
    let tail = engine
        .history("r8", q(Some(9), None))
        .await
        .expect("history");
    assert_eq!((seqs(&tail), tail.more), (vec![10], false));
    let one = engine
        .history(
            "r8",
            HistoryQuery {
                since: Some(0),
                before: None,
                limit: 50,
                max_bytes: 10,
            },
        )
        .await
        .expect("history");
    assert_eq!(seqs(&one), [1], "a page always holds one message");
    // The ends of what a client can name: nothing after the largest seq, nothing before
    // 1, and the page still says where the room is.
    for (since, before) in [
        (Some(u64::MAX), None),
        (Some(u64::MAX), Some(u64::MAX)),
        (None, Some(1)),
    ] {
        let page = engine
            .history("r8", q(since, before))
            .await
            .expect("history");
        assert_eq!(
            (seqs(&page), page.top),
            (vec![], 10),
            "{since:?} {before:?}"
        );
    }
}

/// The epoch rule: a store restored from an older snapshot (top below what this node
/// handed out) must not number on in the same epoch.
pub(super) async fn a_store_behind_this_node_starts_a_new_epoch(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    for room in ["r9", "user:ivy"] {
        let mut rx = listen(&hub, &*engine, room, 1).await;
        let mut last = None;
        for i in 1..=5 {
            last = Some(
                engine
                    .publish(publish(room, "a", &format!("m{i}"), "0"))
                    .await
                    .expect("publish"),
            );
        }
        let old = last.expect("published").at;
        assert_eq!(seqs(&take(&mut rx, 5).await), [1, 2, 3, 4, 5]);
        engine.rewind_for_test(room, Some(3)).await;
        let p = engine
            .publish(publish(room, "b", "after", "1"))
            .await
            .expect("publish");
        assert_ne!(p.at.epoch, old.epoch, "{room}: a new epoch");
        assert_eq!(p.at.seq, 1, "{room}: numbered from 1 again");
        let got = take(&mut rx, 1).await;
        let Some(Outbound::Msg(env)) = got.first() else {
            panic!("{room}: the new message is delivered")
        };
        assert_eq!((env.seq, &env.epoch), (1, &p.at.epoch));
        // A msg id stored in the replaced epoch is stored again, not answered from it.
        let again = engine
            .publish(publish(room, "a", "m5", "0"))
            .await
            .expect("publish");
        assert!(!again.duplicate);
        assert_eq!((again.at.seq, &again.at.epoch), (2, &p.at.epoch));
        let page = engine
            .history(
                room,
                HistoryQuery {
                    since: Some(0),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("history");
        assert_eq!(page.epoch, p.at.epoch);
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}

/// The epoch rule: a room the store lost starts a new epoch (never the old one again).
pub(super) async fn a_lost_room_starts_a_new_epoch(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    let old = engine
        .publish(publish("r10", "a", "m1", "0"))
        .await
        .expect("publish");
    engine.rewind_for_test("r10", None).await;
    let page = engine
        .history("r10", HistoryQuery::default())
        .await
        .expect("history");
    assert!(
        !page.covers(1, Some(&old.at.epoch)),
        "the client must see the gap"
    );
    let p = engine
        .publish(publish("r10", "a", "m2", "0"))
        .await
        .expect("publish");
    assert_ne!(p.at.epoch, old.at.epoch);
    assert_eq!(p.at.seq, 1);
}
