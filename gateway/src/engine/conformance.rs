//! Engine conformance suite: every engine must pass these, unchanged.

mod bounded;
mod expiry;
mod head;
mod nodes;
mod presence;
mod sessions;
mod trace;

use super::{Engine, HistoryQuery, Publish, EMPTY_EPOCH};
use crate::config::Config;
use crate::hub::Hub;
use crate::outbound::{queue, Outbound, OutboundReceiver};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Builds a fresh engine (empty state) delivering into the given hub.
pub trait Factory {
    /// The engine under test.
    fn make(&self, hub: Arc<Hub>, config: &Config) -> impl Future<Output = Arc<dyn Engine>>;
}

impl<F: Fn(Arc<Hub>, &Config) -> Arc<dyn Engine>> Factory for F {
    async fn make(&self, hub: Arc<Hub>, config: &Config) -> Arc<dyn Engine> {
        self(hub, config)
    }
}

/// Runs every conformance check against engines from `factory`. Each check asks for a
/// fresh engine; state must not leak between them (a Redis factory uses a new key prefix).
pub async fn run_all(factory: &impl Factory) {
    publish_orders_and_delivers(factory).await;
    duplicate_msg_id_returns_original_seq(factory).await;
    history_paging(factory).await;
    retention_by_count_and_age(factory).await;
    expiry::a_backlog_of_expired_messages_leaves_at_once(factory).await;
    expiry::expired_dms_no_longer_count_against_the_quota(factory).await;
    presence_join_leave(factory).await;
    presence::many_leaves_at_once_are_each_a_leave(factory).await;
    presence::a_listing_holds_at_most_its_limit_and_counts_all(factory).await;
    sessions::take_once_and_expire(factory).await;
    sessions::a_taken_token_is_not_saved_again(factory).await;
    sessions::inbox_cursor_only_moves_forward(factory).await;
    sessions::inbox_cursor_lives_twice_the_inbox_namespaces_max_age(factory).await;
    concurrent_publishers_keep_seq_order(factory).await;
    nodes::registry(factory).await;
    nodes::room_starts_count_down_per_user_to_a_bounded_debt(factory).await;
    bounded::history_pages_by_bytes_and_says_more(factory).await;
    bounded::a_store_behind_this_node_starts_a_new_epoch(factory).await;
    bounded::a_lost_room_starts_a_new_epoch(factory).await;
    trace::only_a_valid_traceparent_travels(factory).await;
    head::a_head_handed_back_is_the_rooms_head(factory).await;
}

fn config() -> Config {
    let mut c = Config::default();
    c.history.max_messages = 5;
    c.history.max_age = Duration::from_secs(3600);
    c.sessions.resume_ttl = Duration::from_millis(300);
    c
}

fn publish(room: &str, from: &str, msg_id: &str, body: &str) -> Publish {
    Publish {
        room: room.into(),
        from: from.into(),
        msg_id: msg_id.into(),
        body: serde_json::value::RawValue::from_string(body.to_string()).expect("raw body"),
        traceparent: None,
    }
}

/// Subscribes a fake connection to a room in the hub and the engine.
async fn listen(hub: &Hub, engine: &dyn Engine, room: &str, conn: u64) -> OutboundReceiver {
    let (q, rx) = queue(10_000, 1 << 30);
    hub.subscribe(&Arc::from(room), conn, q);
    engine.subscribe(room).await.expect("subscribe");
    rx
}

/// Waits for `n` queued items (the redis engine delivers asynchronously).
async fn take(rx: &mut OutboundReceiver, n: usize) -> Vec<Outbound> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < n && tokio::time::Instant::now() < deadline {
        match rx.try_recv_for_test() {
            Some(item) => out.push(item),
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    out
}

fn seqs(items: &[Outbound]) -> Vec<u64> {
    items
        .iter()
        .filter_map(|i| match i {
            Outbound::Msg(e) => Some(e.seq),
            _ => None,
        })
        .collect()
}

async fn publish_orders_and_delivers(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    let mut rx = listen(&hub, &*engine, "r1", 1).await;
    let a = engine
        .publish(publish("r1", "alice", "a", r#"{"t":"hi"}"#))
        .await
        .expect("publish");
    let b = engine
        .publish(publish("r1", "bob", "b", r#""yo""#))
        .await
        .expect("publish");
    assert_eq!((a.at.seq, b.at.seq), (1, 2));
    assert_eq!(a.at.epoch, b.at.epoch);
    assert!(!a.duplicate);
    let got = take(&mut rx, 2).await;
    assert_eq!(seqs(&got), [1, 2]);
    let Outbound::Msg(first) = &got[0] else {
        panic!("not a msg")
    };
    let frame: serde_json::Value = serde_json::from_str(&first.frame).expect("frame is json");
    assert_eq!(frame["type"], "msg");
    assert_eq!(frame["room"], "r1");
    assert_eq!(frame["from"], "alice");
    assert_eq!(frame["msg_id"], "a");
    assert_eq!(frame["body"]["t"], "hi");
    assert_eq!(frame["epoch"], &*a.at.epoch);
    assert!(frame["ts"].as_u64().is_some());
}

async fn duplicate_msg_id_returns_original_seq(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    let mut rx = listen(&hub, &*engine, "r2", 1).await;
    let a = engine
        .publish(publish("r2", "alice", "same", "1"))
        .await
        .expect("publish");
    let again = engine
        .publish(publish("r2", "alice", "same", "1"))
        .await
        .expect("publish");
    let other_sender = engine
        .publish(publish("r2", "bob", "same", "1"))
        .await
        .expect("publish");
    assert_eq!(again.at, a.at);
    assert!(again.duplicate);
    assert_eq!(other_sender.at.seq, a.at.seq + 1, "ids are per sender");
    let got = take(&mut rx, 3).await;
    assert_eq!(seqs(&got), [1, 2], "the duplicate is not delivered");
    let page = engine
        .history(
            "r2",
            HistoryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(page.messages.len(), 2);
}

async fn history_paging(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let mut c = config();
    c.history.max_messages = 100;
    let engine = f.make(hub.clone(), &c).await;
    for i in 1..=10 {
        engine
            .publish(publish("r3", "a", &format!("m{i}"), &i.to_string()))
            .await
            .expect("publish");
    }
    let q = |since, before, limit| HistoryQuery {
        since,
        before,
        limit,
        max_bytes: 0,
    };
    let page = engine
        .history("r3", q(None, None, 3))
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [8, 9, 10]
    );
    assert_eq!((page.top, page.first), (10, 1));
    let page = engine
        .history("r3", q(None, Some(8), 3))
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [5, 6, 7]
    );
    let page = engine
        .history("r3", q(Some(2), None, 3))
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let page = engine
        .history("r3", q(Some(2), Some(5), 10))
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(!page.more, "nothing left out");
    let page = engine
        .history("r3", q(None, Some(8), 3))
        .await
        .expect("history");
    assert!(page.more, "seqs 1-4 are older");
    let empty = engine
        .history("never-used", q(None, None, 10))
        .await
        .expect("history");
    assert_eq!((empty.top, empty.first, empty.messages.len()), (0, 1, 0));
    assert_eq!(&*empty.epoch, EMPTY_EPOCH, "a read creates no epoch");
    assert!(empty.covers(0, Some(&empty.epoch)));
    assert!(empty.covers(0, Some("any")), "seq 0 has seen nothing");
    assert!(
        !empty.covers(1, Some("other")),
        "a seq the room never reached"
    );
    // The first write starts a real epoch, and a position at seq 0 is covered by it.
    let p = engine
        .publish(publish("never-used", "a", "m", "1"))
        .await
        .expect("publish");
    assert_ne!(&*p.at.epoch, EMPTY_EPOCH);
    let page = engine
        .history("never-used", q(Some(0), None, 10))
        .await
        .expect("history");
    assert!(page.covers(0, Some(EMPTY_EPOCH)));
}

async fn retention_by_count_and_age(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    for i in 1..=8 {
        engine
            .publish(publish("r4", "a", &format!("m{i}"), "0"))
            .await
            .expect("publish");
    }
    let page = engine
        .history(
            "r4",
            HistoryQuery {
                since: Some(0),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8]
    );
    assert_eq!(page.first, 4);
    assert!(page.covers(3, None));
    assert!(!page.covers(2, None), "seq 3 was trimmed");
    assert!(!page.covers(5, Some("other-epoch")));

    let mut c = config();
    c.history.max_age = Duration::from_millis(200);
    let engine = f.make(hub.clone(), &c).await;
    engine
        .publish(publish("r5", "a", "old", "0"))
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    engine
        .publish(publish("r5", "a", "new", "0"))
        .await
        .expect("publish");
    let page = engine
        .history(
            "r5",
            HistoryQuery {
                since: Some(0),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [2],
        "old one aged out"
    );
}

async fn presence_join_leave(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    let mut rx = listen(&hub, &*engine, "r6", 1).await;
    engine
        .presence_join("r6", "alice", "c1")
        .await
        .expect("join");
    engine
        .presence_join("r6", "alice", "c2")
        .await
        .expect("join");
    engine.presence_join("r6", "bob", "c3").await.expect("join");
    assert_eq!(engine.presence("r6").await.expect("list"), ["alice", "bob"]);
    engine
        .presence_leave("r6", "alice", "c1")
        .await
        .expect("leave");
    assert_eq!(
        engine.presence("r6").await.expect("list"),
        ["alice", "bob"],
        "alice has c2"
    );
    engine
        .presence_leave("r6", "alice", "c2")
        .await
        .expect("leave");
    assert_eq!(engine.presence("r6").await.expect("list"), ["bob"]);
    let events: Vec<serde_json::Value> = take(&mut rx, 3)
        .await
        .into_iter()
        .filter_map(|i| match i {
            Outbound::Frame(f) => serde_json::from_str(&f).ok(),
            _ => None,
        })
        .collect();
    // A hub without a window pushes each change as its own frame, in order.
    let summary: Vec<(String, String)> = events
        .iter()
        .flat_map(|e| {
            let of = |list: &str, event: &str| -> Vec<(String, String)> {
                let users = e[list].as_array().cloned().unwrap_or_default();
                let user = |u: serde_json::Value| u.as_str().unwrap_or("").to_string();
                users.into_iter().map(|u| (user(u), event.into())).collect()
            };
            [of("joined", "join"), of("left", "leave")].concat()
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alice".into(), "join".into()),
            ("bob".into(), "join".into()),
            ("alice".into(), "leave".into())
        ]
    );
}

async fn concurrent_publishers_keep_seq_order(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let mut c = config();
    c.history.max_messages = 1000;
    let engine = f.make(hub.clone(), &c).await;
    let mut rx = listen(&hub, &*engine, "r7", 1).await;
    let mut tasks = Vec::new();
    for p in 0..8 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let r = engine
                    .publish(publish("r7", &format!("p{p}"), &format!("{i}"), "0"))
                    .await
                    .expect("publish");
                acked.push(r.at.seq);
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("publisher"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=200).collect::<Vec<u64>>(),
        "every seq assigned once"
    );
    let got = seqs(&take(&mut rx, 200).await);
    assert_eq!(
        got,
        (1..=200).collect::<Vec<u64>>(),
        "delivered in seq order"
    );
}
