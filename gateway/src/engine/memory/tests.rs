use super::*;

fn engine(hub: Arc<Hub>, config: &Config) -> Arc<dyn Engine> {
    Arc::new(MemoryEngine::new(hub, config))
}

#[tokio::test]
async fn conformance() {
    crate::engine::conformance::run_all(&engine).await;
}

#[tokio::test]
async fn reads_create_nothing_and_idle_empty_streams_are_pruned() {
    let mut c = Config::default();
    c.history.max_age = Duration::from_millis(50);
    c.sessions.dedup_window = Duration::from_millis(50);
    let e = MemoryEngine::new(Arc::new(Hub::default()), &c);
    let q = HistoryQuery {
        limit: 10,
        ..Default::default()
    };
    for i in 0..100 {
        e.history(&format!("ghost{i}"), q).await.expect("history");
    }
    assert!(lock(&e.streams).is_empty(), "reading made no stream");
    let body = serde_json::value::RawValue::from_string("1".into()).expect("raw");
    e.publish(Publish {
        room: "r".into(),
        from: "a".into(),
        msg_id: "m".into(),
        body,
        traceparent: None,
    })
    .await
    .expect("publish");
    assert_eq!(lock(&e.streams).len(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(past) = Instant::now().checked_sub(PRUNE_EVERY * 2) {
        *lock(&e.pruned) = past;
    }
    e.history("ghost", q).await.expect("history");
    assert!(
        lock(&e.streams).is_empty(),
        "aged out and forgotten: pruned"
    );
}

/// A room idle past its max age and dedup window is pruned, but keeps its epoch and top
/// (as Redis keeps a room's meta past its messages): a client at its top missed nothing,
/// and the next message numbers on. Before, it read as a room never written to (epoch
/// `0000000000000000`), so a resume reported `recovered: false` and the next message
/// started a new epoch (and counted as a room start).
#[tokio::test]
async fn a_pruned_room_keeps_its_epoch_and_numbers_on() {
    let mut c = Config::default();
    c.history.max_age = Duration::from_millis(50);
    c.sessions.dedup_window = Duration::from_millis(50);
    let e = MemoryEngine::new(Arc::new(Hub::default()), &c);
    let publish = |id: &str| Publish {
        room: "r".into(),
        from: "a".into(),
        msg_id: id.into(),
        body: serde_json::value::RawValue::from_string("1".into()).expect("raw"),
        traceparent: None,
    };
    e.publish(publish("m1")).await.expect("publish");
    let second = e.publish(publish("m2")).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(past) = Instant::now().checked_sub(PRUNE_EVERY * 2) {
        *lock(&e.pruned) = past;
    }
    let q = HistoryQuery {
        limit: 10,
        ..Default::default()
    };
    let page = e.history("r", q).await.expect("history");
    assert!(lock(&e.streams).is_empty(), "pruned");
    assert_eq!(
        (&*page.epoch, page.top, page.first),
        (&*second.at.epoch, 2, 3)
    );
    assert!(
        page.covers(2, Some(&second.at.epoch)),
        "nothing missed at the top"
    );
    let third = e.publish(publish("m3")).await.expect("publish");
    assert_eq!(third.at, StreamPosition::new(second.at.epoch.clone(), 3));
}

/// Sessions nobody resumes must not pile up: expired ones are swept on a later save
/// (at most once a second), so memory stays bounded by the sessions of the last TTL.
#[tokio::test]
async fn expired_sessions_are_swept() {
    let mut config = Config::default();
    config.sessions.resume_ttl = Duration::from_millis(100);
    let engine = MemoryEngine::new(Arc::new(Hub::default()), &config);
    let record = SessionRecord {
        user: "u".into(),
        node: "n".into(),
        rooms: Default::default(),
        connected_at: 0,
        last_seen: 0,
        grants: Default::default(),
        open: false,
    };
    for i in 0..10 {
        engine
            .save_session(&format!("t{i}"), &record)
            .await
            .expect("save");
    }
    assert_eq!(lock(&engine.sessions).map.len(), 10);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    engine.save_session("fresh", &record).await.expect("save");
    let left: Vec<String> = lock(&engine.sessions).map.keys().cloned().collect();
    assert_eq!(left, ["fresh"]);
}

/// A user's last leave and next first join racing on two threads reach the hub in the
/// order they changed the presence map: the last presence frame members get says what
/// the map holds. Told after the lock was released, a join could overtake the leave and
/// members saw `left` for a present user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_leave_and_join_are_announced_in_map_order() {
    use crate::outbound::Outbound;
    let hub = Arc::new(Hub::default()); // no presence window: one frame per change
    let e = Arc::new(MemoryEngine::new(hub.clone(), &Config::default()));
    let (q, mut rx) = crate::outbound::queue(1 << 20, 1 << 30);
    hub.subscribe(&Arc::from("r"), 0, q);
    let mut wrong = 0;
    for i in 0..2000u32 {
        let (old, new) = (format!("a{i}"), format!("b{i}"));
        e.presence_join("r", "u", &old).await.expect("join");
        let (leave, join) = (e.clone(), e.clone());
        let left = tokio::spawn(async move { leave.presence_leave("r", "u", &old).await });
        let joined = tokio::spawn(async move { join.presence_join("r", "u", &new).await });
        left.await.expect("task").expect("leave");
        joined.await.expect("task").expect("join");
        let mut last = None;
        while let Some(item) = rx.try_recv_for_test() {
            if let Outbound::Frame(f) = item {
                last = Some(f.contains("\"joined\":[\"u\"]"));
            }
        }
        let present = e.is_present("r", "u").await.expect("is_present");
        if last.is_some_and(|joined| joined != present) {
            wrong += 1;
        }
        e.presence_leave("r", "u", &format!("b{i}"))
            .await
            .expect("leave");
        while rx.try_recv_for_test().is_some() {}
    }
    assert_eq!(wrong, 0, "frames out of the map's order");
}

/// Inbox cursors are forgotten 2 × the inbox's maxAge after the last ack, as the Redis
/// engine's keys expire: kept for the process's life they grew with every user who ever
/// acknowledged. An expired cursor reads as none before any sweep, and the next ack's
/// sweep drops it.
#[test]
fn inbox_cursors_expire_their_ttl_after_the_last_ack_and_are_swept() {
    let ttl = Duration::from_secs(3600);
    let at = |seq| StreamPosition::new("e", seq);
    let t0 = Instant::now();
    let mut cursors = InboxCursors::default();
    cursors.ack("a", &at(3), ttl, t0);
    cursors.ack("b", &at(1), ttl, t0);
    let later = t0 + ttl / 2;
    cursors.ack("b", &at(2), ttl, later);
    let expired = t0 + ttl;
    assert_eq!(
        cursors.get("a", expired - Duration::from_millis(1)),
        Some(at(3))
    );
    assert_eq!(cursors.get("a", expired), None, "expired: none");
    assert_eq!(
        cursors.get("b", expired),
        Some(at(2)),
        "kept from its last ack"
    );
    cursors.ack("c", &at(1), ttl, expired);
    assert_eq!(
        cursors.len(),
        2,
        "the ack's sweep dropped the expired cursor"
    );
    cursors.ack("b", &at(1), ttl, later + ttl);
    assert_eq!(
        cursors.get("b", later + ttl),
        Some(at(1)),
        "an expired seq is not kept"
    );
}

/// The engine keeps a cursor for 2 × the inbox's maxAge (a namespace's retention of
/// `user:` applies, as to the inbox's messages).
#[tokio::test]
async fn an_ack_keeps_the_cursor_two_inbox_max_ages() {
    let mut config = Config::default();
    config.inbox.max_age = Duration::from_secs(3600);
    let engine = MemoryEngine::new(Arc::new(Hub::default()), &config);
    let before = Instant::now();
    let at = StreamPosition::new("e", 1);
    engine.ack_inbox("u", &at).await.expect("ack");
    let after = Instant::now();
    let until = lock(&engine.inbox_cursors).expiry("u").flatten();
    let ttl = Duration::from_secs(7200);
    assert!(
        until.is_some_and(|u| u >= before + ttl && u <= after + ttl),
        "{until:?}"
    );
}

/// An ack at seq 0 acknowledges nothing and is read as no cursor: it stores none (every
/// user resuming with an empty inbox left one behind), and moves no stored one back.
#[tokio::test]
async fn an_ack_at_seq_zero_stores_no_cursor() {
    let engine = MemoryEngine::new(Arc::new(Hub::default()), &Config::default());
    let at = |seq| StreamPosition::new("e", seq);
    engine.ack_inbox("u", &at(0)).await.expect("ack");
    assert_eq!(lock(&engine.inbox_cursors).len(), 0);
    assert_eq!(engine.inbox_cursor("u").await.expect("cursor"), None);
    engine.ack_inbox("u", &at(4)).await.expect("ack");
    engine.ack_inbox("u", &at(0)).await.expect("ack");
    assert_eq!(engine.inbox_cursor("u").await.expect("cursor"), Some(at(4)));
}

async fn dm(engine: &MemoryEngine, from: &str, id: u32) -> Result<Published, EngineError> {
    let body = serde_json::value::RawValue::from_string("1".into()).expect("raw");
    engine
        .publish(Publish {
            room: "user:support".into(),
            from: from.into(),
            msg_id: id.to_string(),
            body,
            traceparent: None,
        })
        .await
}

/// A busy inbox's DM-quota map keeps the senders of retained messages, not one entry per
/// sender it ever had; the quota still counts what is retained.
#[tokio::test]
async fn a_busy_inbox_forgets_senders_whose_messages_were_trimmed() {
    let mut config = Config::default();
    config.inbox.max_messages = 10;
    config.namespaces = vec![crate::config::NamespaceConfig {
        dm_quota: 2,
        ..crate::config::NamespaceConfig::inbox()
    }];
    let engine = MemoryEngine::new(Arc::new(Hub::default()), &config);
    for i in 0..5000 {
        dm(&engine, &format!("s{i}"), 0).await.expect("dm");
    }
    let stream = engine.existing("user:support").expect("stream");
    let senders = lock(&stream).by_sender.len();
    assert!(senders <= 2 * 10, "{senders} senders for 10 messages");

    dm(&engine, "x", 1).await.expect("dm");
    dm(&engine, "x", 2).await.expect("dm");
    let refused = dm(&engine, "x", 3).await;
    assert!(matches!(refused, Err(EngineError::Quota(_))), "{refused:?}");
    for i in 0..10 {
        dm(&engine, &format!("t{i}"), 0).await.expect("dm");
    }
    dm(&engine, "x", 4)
        .await
        .expect("x's messages were trimmed: under quota again");
}
