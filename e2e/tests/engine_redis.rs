//! The engine conformance suite, unchanged, against a real redis-server.

use chat_gateway::config::Config;
use chat_gateway::engine::conformance::run_all;
use chat_gateway::hub::Hub;
use e2e::engines::{engine_on_hub, engine_with_prefix, listen, message, next_msg, two_nodes};
use e2e::redis::RedisServer;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_engine_passes_the_conformance_suite() {
    let redis = RedisServer::start();
    let mut base = Config::default();
    base.redis.url = redis.url();
    run_all(&e2e::engines::Fresh(base)).await;
}

/// The node registry lists every node of a cluster (rebalancing compares against all of
/// them), and only that cluster's: two key prefixes on one Redis are two clusters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registry_lists_every_node_of_its_prefix_only() {
    use chat_gateway::engine::NodeReport;
    let redis = RedisServer::start();
    let ours = format!("t{:08x}", rand::random::<u32>());
    let theirs = format!("t{:08x}", rand::random::<u32>());
    let engine = engine_with_prefix(&redis.url(), &ours).await;
    let other = engine_with_prefix(&redis.url(), &theirs).await;
    let report = |id: &str, connections: u64| NodeReport {
        id: id.into(),
        connections,
        draining: false,
        heartbeat: chat_gateway::engine::now_ms(),
    };
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        engine
            .report_node(&report(id, i as u64))
            .await
            .expect("report");
    }
    other
        .report_node(&report("stranger", 9))
        .await
        .expect("report");
    let nodes = engine.nodes().await.expect("nodes");
    let seen: Vec<(String, u64)> = nodes
        .iter()
        .map(|n| (n.id.clone(), n.connections))
        .collect();
    assert_eq!(
        seen,
        [
            ("a".into(), 0),
            ("b".into(), 1),
            ("c".into(), 2),
            ("d".into(), 3)
        ]
    );
    let theirs: Vec<String> = other
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(theirs, ["stranger"]);
    // The registry expires with its nodes' entries (it outlived every gateway before).
    let ttl = redis.command(&["PTTL", &format!("{ours}:nodes")]);
    assert!(
        matches!(ttl, Ok(redis::Value::Int(ms)) if ms > 0 && ms <= 15_000),
        "{ttl:?}"
    );
}

/// An inbox's subscription on a node that does not deliver it yet hands back the head the
/// subscriber read to start delivering it (the connection's catch-up reads no head of its
/// own: one round trip per connect fewer); a later one, on the fast path, nothing. A gap
/// fill after a pub/sub outage starts at that head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_subscription_hands_back_the_head_it_started_from() {
    let redis = RedisServer::start();
    let (hub, subscriber, publisher) = two_nodes(&redis.url(), &redis.url()).await;
    let send = |room: &str, n: u64| publisher.publish(message(room, n));
    // Every inbox travels on the node's one channel, in order: once the node delivered
    // one to another inbox, the three each of Bob and Dave had before it are behind it
    // (none in flight).
    let (mut other, _) = listen(&hub, &*subscriber, "user:other", 9).await;
    for n in 1..=3 {
        send("user:bob", n).await.expect("publish");
        send("user:dave", n).await.expect("publish");
    }
    send("user:other", 1).await.expect("publish");
    assert_eq!(next_msg(&mut other).await, Some(("user:other".into(), 1)));

    let (mut phone, head) = listen(&hub, &*subscriber, "user:bob", 1).await;
    let head = head.expect("the head the subscriber read");
    let now = publisher
        .history("user:bob", Default::default())
        .await
        .expect("history");
    assert_eq!((head.top, &*head.epoch), (3, &*now.epoch));

    let (_laptop, again) = listen(&hub, &*subscriber, "user:bob", 2).await;
    assert!(again.is_none(), "delivered already: nothing read for it");

    let (mut dave, _) = listen(&hub, &*subscriber, "user:dave", 3).await;

    // During an outage Bob gets a fourth DM; Dave's inbox is lost and starts again.
    let mut admin = redis.admin();
    admin.start_pubsub_outage();
    assert_eq!(send("user:bob", 4).await.expect("publish").at.seq, 4);
    publisher.rewind_for_test("user:dave", None).await;
    assert_eq!(send("user:dave", 1).await.expect("publish").at.seq, 1);
    admin.end_outage();
    // The fill starts at the head (from the inbox's start it would hand on 1 first), or
    // over in the new epoch.
    assert_eq!(next_msg(&mut phone).await, Some(("user:bob".into(), 4)));
    assert_eq!(next_msg(&mut dave).await, Some(("user:dave".into(), 1)));
}

/// Inboxes subscribed at once (a connect storm) have their heads read many to a script
/// call, and each subscription hands back its own inbox's head: some inboxes hold
/// messages, the others were never written to, and rooms subscribed in the same batch
/// get none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inboxes_subscribed_at_once_share_their_head_reads() {
    let redis = RedisServer::start();
    let (hub, node, publisher) = two_nodes(&redis.url(), &redis.url()).await;
    let names: Vec<String> = (0..100)
        .flat_map(|i| [format!("user:u{i}"), format!("room{i}")])
        .filter(|name| name.starts_with("user:") || name.ends_with('0'))
        .collect();
    for (i, name) in names.iter().enumerate().step_by(3) {
        for n in 1..=(i as u64 % 4 + 1) {
            publisher.publish(message(name, n)).await.expect("publish");
        }
    }
    let before = redis.calls("evalsha");
    let subscribed = names
        .iter()
        .zip(1..)
        .map(|(name, conn)| listen(&hub, &*node, name, conn));
    let heads = futures_util::future::join_all(subscribed).await;
    let calls = redis.calls("evalsha") - before;
    for (name, (_, head)) in names.iter().zip(heads) {
        if !name.starts_with("user:") {
            assert!(
                head.is_none(),
                "{name}: a room's subscription reads no head"
            );
            continue;
        }
        let head = head.expect("an inbox's subscription hands back its head");
        let own = publisher
            .history(name, Default::default())
            .await
            .expect("history");
        assert_eq!(
            (&*head.epoch, head.top, head.first),
            (&*own.epoch, own.top, own.first),
            "{name}"
        );
    }
    assert!(calls <= 20, "{calls} script calls for 100 inboxes' heads");
}

/// An inbox whose store is behind what the node saw (restored from an older snapshot),
/// subscribed again among others at once: its head is not the batch's stale read but the
/// one of its own read, which starts a new epoch (the rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_behind_the_node_gets_a_new_epoch_in_a_batch_too() {
    let redis = RedisServer::start();
    let (hub, node, publisher) = two_nodes(&redis.url(), &redis.url()).await;
    for n in 1..=3 {
        let sent = publisher.publish(message("user:a", n)).await;
        sent.expect("publish");
    }
    let (_, seen) = listen(&hub, &*node, "user:a", 1).await;
    let seen = seen.expect("the head the subscriber read");
    assert!(hub.unsubscribe("user:a", 1));
    node.unsubscribe("user:a").await.expect("unsubscribe");
    publisher.rewind_for_test("user:a", Some(1)).await;

    let others: Vec<String> = (0..20).map(|i| format!("user:o{i}")).collect();
    let names = others.iter().map(String::as_str).chain(["user:a"]);
    let subscribed = names
        .zip(2..)
        .map(|(name, conn)| listen(&hub, &*node, name, conn));
    let before = redis.calls("evalsha");
    let mut heads = futures_util::future::join_all(subscribed).await;
    let calls = redis.calls("evalsha") - before;
    let head = heads
        .pop()
        .and_then(|(_, head)| head)
        .expect("user:a's head");
    let now = publisher.history("user:a", Default::default()).await;
    let now = now.expect("history");
    assert_ne!(
        head.epoch, seen.epoch,
        "a store behind the node: a new epoch"
    );
    assert_eq!((&*head.epoch, head.top), (&*now.epoch, now.top));
    assert!(calls < 10, "{calls} script calls for 21 inboxes' heads");
}

/// Entering a room (presence) hands back the room's head read in the same script: the
/// joiner's catch-up reads no head of its own. Unless the store is behind what the node
/// saw (restored from an older snapshot): then nothing, and the joiner's own read starts
/// a new epoch (the rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entering_a_room_hands_back_its_head_unless_the_store_is_behind() {
    let redis = RedisServer::start();
    let (_hub, node, publisher) = two_nodes(&redis.url(), &redis.url()).await;
    for n in 1..=3 {
        publisher
            .publish(message("lobby", n))
            .await
            .expect("publish");
    }
    let head = node.enter("lobby", "bob", "n/1.1").await.expect("enter");
    let head = head.expect("the head read with the presence entry");
    let now = node
        .history("lobby", Default::default())
        .await
        .expect("history");
    assert_eq!((head.top, &*head.epoch, head.first), (3, &*now.epoch, 1));
    assert_eq!(node.presence("lobby").await.expect("presence"), ["bob"]);

    publisher.rewind_for_test("lobby", Some(1)).await;
    let behind = node.enter("lobby", "carol", "n/2.1").await.expect("enter");
    assert!(behind.is_none(), "a store behind this node: {behind:?}");
    let renumbered = node
        .history("lobby", Default::default())
        .await
        .expect("history");
    assert_ne!(
        renumbered.epoch, now.epoch,
        "the joiner's own read starts a new epoch"
    );
}

/// The next message the queue hands out within 10 s, as (room, seq).
/// A crashed node's presence entries are swept (here by a `presence` listing on another
/// node) and the leave the sweep script announces reaches members elsewhere as the
/// `presence` frame every other change uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swept_entry_is_announced_as_a_left_user() {
    use chat_gateway::outbound::Outbound;
    let redis = RedisServer::start();
    let prefix = format!("t{:08x}", rand::random::<u32>());
    let hub = Arc::new(Hub::default());
    let member = engine_on_hub(hub.clone(), &redis.url(), &prefix).await;
    let other = engine_with_prefix(&redis.url(), &prefix).await;
    let (mut rx, _) = listen(&hub, &*member, "swept", 1).await;
    // What a node that died left behind: an entry whose expiry has passed.
    let mut admin = redis.admin();
    let pc = format!("{prefix}:{{swept}}:pc");
    let pu = format!("{prefix}:{{swept}}:pu");
    assert_eq!(admin.command(&["ZADD", &pc, "1", "ghost\0dead.1"]), ":1");
    assert_eq!(admin.command(&["HINCRBY", &pu, "ghost", "1"]), ":1");
    assert!(other.presence("swept").await.expect("list").is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let frame = loop {
        match rx.try_recv_for_test() {
            Some(Outbound::Frame(f)) => break f,
            Some(_) => {}
            None if tokio::time::Instant::now() > deadline => panic!("no presence frame"),
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&frame).expect("json"),
        serde_json::json!({"type": "presence", "room": "swept", "joined": [], "left": ["ghost"]})
    );
}

/// Presence entries Redis lost (a restart without persistence, an evicted key, another
/// node's sweep while this one was cut off) come back with the node's next refresh for
/// the connections it still holds, and only for those: one that left stays gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lost_from_redis_is_restored_for_connections_still_there() {
    let redis = RedisServer::start();
    let prefix = format!("t{:08x}", rand::random::<u32>());
    let node = engine_with_prefix(&redis.url(), &prefix).await;
    let other = engine_with_prefix(&redis.url(), &prefix).await;
    for (user, conn) in [("alice", "n.1"), ("bob", "n.2")] {
        node.presence_join("lost", user, conn).await.expect("join");
    }
    node.presence_leave("lost", "bob", "n.2")
        .await
        .expect("leave");
    assert_eq!(other.presence("lost").await.expect("list"), ["alice"]);
    let mut admin = redis.admin();
    for key in ["pc", "pu"] {
        assert_eq!(
            admin.command(&["DEL", &format!("{prefix}:{{lost}}:{key}")]),
            ":1"
        );
    }
    assert!(other.presence("lost").await.expect("list").is_empty());
    // The refresh runs every 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while other.presence("lost").await.expect("list").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's entry was never restored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(other.presence("lost").await.expect("list"), ["alice"]);
    assert!(other.is_present("lost", "alice").await.expect("is_present"));
}

/// The channels of `room` this Redis has a subscriber for (its own server: any prefix).
fn room_channels(redis: &RedisServer, room: &str) -> Vec<String> {
    let pattern = format!("*:c:{room}");
    let listed = redis
        .command(&["PUBSUB", "CHANNELS", &pattern])
        .expect("PUBSUB CHANNELS");
    redis::from_redis_value(listed).expect("channel names")
}

/// A room left by its last local member stays subscribed for a while (the subscription
/// linger): a member back within it costs no SUBSCRIBE and gets the room's messages; once
/// the room has stayed empty, its channel goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_room_lingers_subscribed_then_its_channel_goes() {
    let redis = RedisServer::start();
    let (hub, node, publisher) = two_nodes(&redis.url(), &redis.url()).await;
    let room: Arc<str> = Arc::from("quiet");

    let _first = listen(&hub, &*node, &room, 1).await;
    assert_eq!(room_channels(&redis, &room).len(), 1, "subscribed");
    assert!(hub.unsubscribe(&room, 1), "the last local member left");
    node.unsubscribe(&room).await.expect("unsubscribe");
    assert_eq!(
        room_channels(&redis, &room).len(),
        1,
        "the channel outlives its last member"
    );

    let subscribes = redis.calls("subscribe");
    let (mut rx, _) = listen(&hub, &*node, &room, 2).await;
    assert_eq!(
        redis.calls("subscribe"),
        subscribes,
        "a member back: no SUBSCRIBE"
    );
    publisher.publish(message(&room, 1)).await.expect("publish");
    assert_eq!(next_msg(&mut rx).await, Some(("quiet".into(), 1)));

    assert!(hub.unsubscribe(&room, 2));
    node.unsubscribe(&room).await.expect("unsubscribe");
    e2e::fleet::wait_until(
        "the emptied room's channel to go",
        Duration::from_secs(20),
        || room_channels(&redis, &room).is_empty(),
    )
    .await;
}

/// `history` with `limit: 0` through a gateway on Redis: no message, and whether the range
/// holds any (the history script said `more: false` where the memory engine said true; the
/// handler asks the engine for one message and leaves it out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_of_limit_zero_says_whether_there_is_more() {
    let redis = RedisServer::start();
    let gws = e2e::gateways::Gateways::start(&redis, 1, &[]);
    let mut c = gws.connect(0, "alice").await;
    assert_eq!(c.join("r").await["type"], "ok");
    for i in 0..3 {
        assert_eq!(c.send("r", serde_json::json!(i)).await["type"], "ok");
    }
    for (since, more) in [(0, true), (2, true), (3, false)] {
        let page = c
            .request(
                serde_json::json!({"type": "history", "room": "r", "limit": 0, "since": since}),
            )
            .await;
        assert_eq!(
            page["messages"],
            serde_json::json!([]),
            "since {since}: {page}"
        );
        assert_eq!(page["more"], more, "since {since}: {page}");
        assert_eq!(page["top"], 3, "{page}");
    }
}

/// Two deployments on one Redis that differ only by database: pub/sub ignores databases,
/// so with the same key prefix each heard the other's rooms (and control commands) until
/// channel names carried the database. A message published on database 2 reaches no
/// member on database 1; one published on 1 after it does, first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_on_two_databases_of_one_redis_hear_only_their_own() {
    let redis = RedisServer::start();
    let prefix = format!("t{:08x}", rand::random::<u32>());
    let hub = Arc::new(Hub::default());
    let ours = engine_on_hub(hub.clone(), &format!("{}/1", redis.url()), &prefix).await;
    let theirs = engine_with_prefix(&format!("{}/2", redis.url()), &prefix).await;
    let (mut member, _) = listen(&hub, &*ours, "lobby", 1).await;
    let (mut dm, _) = listen(&hub, &*ours, "user:ann", 2).await;
    // Theirs has its own room and inbox of those names, at seq 1 and 2 each.
    for n in 1..=2 {
        theirs.publish(message("lobby", n)).await.expect("publish");
        theirs
            .publish(message("user:ann", n))
            .await
            .expect("publish");
    }
    ours.publish(message("lobby", 1)).await.expect("publish");
    ours.publish(message("user:ann", 1)).await.expect("publish");
    assert_eq!(next_msg(&mut member).await, Some(("lobby".into(), 1)));
    assert_eq!(next_msg(&mut dm).await, Some(("user:ann".into(), 1)));
    assert_eq!(
        member.try_recv_for_test().map(|_| "more"),
        None,
        "nothing of theirs"
    );
    assert_eq!(
        dm.try_recv_for_test().map(|_| "more"),
        None,
        "nothing of theirs"
    );
}
