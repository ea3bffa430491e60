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
