//! The Redis engine's gap fill: what a node's connections get after its pub/sub
//! subscription was lost and made again (a real redis-server, two engines as two nodes).

use chat_gateway::config::Config;
use chat_gateway::engine::Engine;
use chat_gateway::hub::Hub;
use e2e::engines::{listen, listen_queue, message, next_msg, two_nodes};
use e2e::fleet::wait_until;
use e2e::redis::RedisServer;
use std::sync::Arc;
use std::time::Duration;

/// Messages published while a node's pub/sub connection is reconnecting are filled in
/// from history once it is back, from the position each room had: the first message of a
/// room subscribed while empty included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_pubsub_reconnects_are_delivered() {
    let redis = RedisServer::start();
    let (hub, subscriber, publisher) = two_nodes(&redis.url(), &redis.url()).await;
    let rooms: Vec<String> = (0..20).map(|i| format!("gap{i}")).collect();
    let mut receivers = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        receivers.push(listen(&hub, &*subscriber, room, i as u64 + 1).await.0);
    }
    let mut admin = redis.admin();
    admin.start_pubsub_outage();
    for room in &rooms {
        let published = publisher.publish(message(room, 1)).await.expect("publish");
        assert_eq!(published.at.seq, 1);
    }
    admin.end_outage();
    for (room, mut rx) in rooms.iter().zip(receivers) {
        assert_eq!(next_msg(&mut rx).await, Some((room.clone(), 1)), "{room}");
    }
}

/// A gap fill starts where the node was in each room, not from the room's start (a
/// reconnect must not re-read every local room whole), unless the room was lost and
/// numbered again meanwhile: then all of its new epoch is new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_fill_starts_at_the_rooms_top_or_over_in_a_new_epoch() {
    let redis = RedisServer::start();
    let (hub, subscriber, publisher) = two_nodes(&redis.url(), &redis.url()).await;
    let send = |room: &str, n: u64| publisher.publish(message(room, n));
    let mut receivers = Vec::new();
    for (i, room) in ["kept", "lost"].into_iter().enumerate() {
        // Three messages before the node subscribes: its top is 3 in this epoch.
        for n in 1..=3 {
            send(room, n).await.expect("publish");
        }
        receivers.push(listen(&hub, &*subscriber, room, i as u64 + 1).await.0);
    }
    let mut admin = redis.admin();
    admin.start_pubsub_outage();
    assert_eq!(send("kept", 4).await.expect("publish").at.seq, 4);
    // "lost" loses its history and starts again: seq 1 of a new epoch.
    publisher.rewind_for_test("lost", None).await;
    let renumbered = send("lost", 1).await.expect("publish");
    assert_eq!(renumbered.at.seq, 1);
    admin.end_outage();
    let mut rx = receivers.into_iter();
    let (mut kept, mut lost) = (rx.next().expect("kept"), rx.next().expect("lost"));
    assert_eq!(next_msg(&mut kept).await, Some(("kept".into(), 4)));
    assert_eq!(next_msg(&mut lost).await, Some(("lost".into(), 1)));
}

/// Two nodes whose subscriber connects as the ACL user `sub` (all allowed for now), so a
/// test can refuse that node's scripts while the publisher goes on.
async fn with_a_restricted_subscriber(
    redis: &RedisServer,
    admin: &mut e2e::redis::RedisAdmin,
) -> (Arc<Hub>, Arc<dyn Engine>, Arc<dyn Engine>) {
    let user = ["ACL", "SETUSER", "sub", "on", ">pw", "~*", "&*", "+@all"];
    assert_eq!(admin.command(&user), "+OK");
    let url = redis.url().replace("redis://", "redis://sub:pw@");
    two_nodes(&url, &redis.url()).await
}

/// A gap fill that fails (here the store refuses the subscribing node's scripts for a
/// while, as a stale route to a dead node does after a failover) is tried again until it
/// succeeds; the room's live messages wait meanwhile, so the gap is never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gap_fill_is_tried_again_before_live_messages_go_on() {
    let redis = RedisServer::start();
    let mut admin = redis.admin();
    let (hub, subscriber, publisher) = with_a_restricted_subscriber(&redis, &mut admin).await;
    let (mut rx, _) = listen(&hub, &*subscriber, "held", 1).await;
    let send = |n: u64| publisher.publish(message("held", n));
    send(1).await.expect("publish 1");
    assert_eq!(next_msg(&mut rx).await, Some(("held".into(), 1)));

    // From now on every gap fill fails. Pub/sub drops and cannot come back while 2 and 3
    // are published: a gap.
    assert_eq!(
        admin.command(&["ACL", "SETUSER", "sub", "-evalsha", "-eval"]),
        "+OK"
    );
    admin.start_pubsub_outage();
    for n in 2..=3 {
        send(n).await.expect("publish");
    }
    admin.end_outage();
    // Once the subscriber is back (its fill failing), live messages reach it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pubsub = redis.command(&["CLIENT", "LIST", "TYPE", "pubsub"]);
        if matches!(&pubsub, Ok(redis::Value::BulkString(b)) if !b.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pub/sub never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 4..=8 {
        send(n).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin.command(&["ACL", "SETUSER", "sub", "+@all"]), "+OK");
    let mut got = Vec::new();
    while let Some((_, seq)) = next_msg(&mut rx).await {
        got.push(seq);
        if seq == 8 {
            break;
        }
    }
    assert_eq!(
        got,
        (2..=8).collect::<Vec<_>>(),
        "the gap first, then live, in order"
    );
}

/// A gap longer than the room's retention cannot be filled: the room's local members are
/// closed with 1013 `replay interrupted` before anything past the gap reaches them (they
/// resume from what they got and learn `recovered: false`), not handed the messages
/// after a hole as if nothing was missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_past_the_rooms_retention_closes_its_members_to_resume() {
    let redis = RedisServer::start();
    let prefix = format!("t{:08x}", rand::random::<u32>());
    let hub = Arc::new(Hub::default());
    let subscriber = e2e::engines::engine_on_hub(hub.clone(), &redis.url(), &prefix).await;
    let mut config = Config::default();
    config.redis.url = redis.url();
    config.redis.key_prefix = prefix;
    config.history.max_messages = 3;
    let publisher: Arc<dyn Engine> = e2e::engines::start(&config, Arc::new(Hub::default())).await;
    let send = |room: &str, n: u64| publisher.publish(message(room, n));
    let (mut trimmed_rx, trimmed, _) = listen_queue(&hub, &*subscriber, "trimmed", 1).await;
    let (mut kept_rx, kept, _) = listen_queue(&hub, &*subscriber, "kept", 2).await;
    send("trimmed", 1).await.expect("publish");
    assert_eq!(next_msg(&mut trimmed_rx).await, Some(("trimmed".into(), 1)));
    let mut admin = redis.admin();
    admin.start_pubsub_outage();
    // 2..=10 published while away; history keeps 8..=10 only. "kept" misses 2, all kept.
    for n in 2..=10 {
        send("trimmed", n).await.expect("publish");
    }
    send("kept", 1).await.expect("publish");
    send("kept", 2).await.expect("publish");
    admin.end_outage();
    assert_eq!(next_msg(&mut kept_rx).await, Some(("kept".into(), 1)));
    assert_eq!(next_msg(&mut kept_rx).await, Some(("kept".into(), 2)));
    // The node fills its rooms in no set order: "kept" may be done before "trimmed".
    wait_until(
        "the trimmed room's members closed",
        Duration::from_secs(10),
        || trimmed.close_reason().is_some(),
    )
    .await;
    assert_eq!(kept.close_reason(), None, "a filled gap closes nobody");
    let reason = trimmed.close_reason().map(|r| (r.code, r.reason));
    assert_eq!(reason, Some((1013, "replay interrupted")));
    assert_eq!(
        next_msg(&mut trimmed_rx).await,
        None,
        "nothing past the gap reaches a closed member"
    );
}

/// A reconnect's gap fill stops at its first failure: the other rooms are held untried
/// (their messages wait in history) and left to the retries, which also stop at their
/// first failure. Each failure can take the command timeout (a route to a node that died
/// after a failover), and a round that tried every room stalled the subscriber, its joins
/// and every room's live messages for as many timeouts. Here fills fail at once (an ACL):
/// the first round tries one room, not twenty; once allowed, every room gets its gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_fill_stops_at_its_first_failure() {
    let redis = RedisServer::start();
    let mut admin = redis.admin();
    let (hub, subscriber, publisher) = with_a_restricted_subscriber(&redis, &mut admin).await;
    let rooms: Vec<String> = (0..20).map(|i| format!("stall{i}")).collect();
    let mut receivers = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        receivers.push(listen(&hub, &*subscriber, room, i as u64 + 1).await.0);
    }
    let refused = || redis.rejected("evalsha") + redis.rejected("eval");
    assert_eq!(
        admin.command(&["ACL", "SETUSER", "sub", "-evalsha", "-eval"]),
        "+OK"
    );
    admin.start_pubsub_outage();
    for room in &rooms {
        publisher.publish(message(room, 1)).await.expect("publish");
    }
    admin.end_outage();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no gap fill was tried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Well within the retries' first wait (100 ms, then a round per second).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tried = refused();
    assert!(
        tried < 5,
        "the reconnect's round tried {tried} fills after one failed"
    );
    assert_eq!(admin.command(&["ACL", "SETUSER", "sub", "+@all"]), "+OK");
    for (room, mut rx) in rooms.iter().zip(receivers) {
        assert_eq!(next_msg(&mut rx).await, Some((room.clone(), 1)), "{room}");
    }
}
