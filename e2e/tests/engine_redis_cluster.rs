//! The engine on a real local Redis Cluster (three masters, three replicas): the
//! conformance suite unchanged, then what only a cluster can get wrong — a room's keys in
//! one slot, admin scans over every master, inboxes routed without a subscription per user.

use chat_gateway::engine::conformance::run_all;
use e2e::engines::Fresh;
use e2e::redis_cluster::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_engine_passes_the_conformance_suite() {
    let cluster = RedisCluster::start();
    run_all(&Fresh(cluster.config("unused"))).await;
}

/// The same over TLS only (clients, cluster bus, replication), with the cluster's CA as
/// `redis.tls.caFile`: the certificates must reach every node the client discovers, and
/// the sharded pub/sub client as well as the command client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_engine_over_tls_passes_the_conformance_suite() {
    let cluster = RedisCluster::start_tls();
    let config = cluster.config("unused");
    assert!(config
        .redis
        .nodes
        .iter()
        .all(|n| n.starts_with("rediss://")));
    config.redis.validate().expect("a valid redis section");
    config
        .redis
        .validate_tls_scheme()
        .expect("rediss:// for redis.tls");
    run_all(&Fresh(config)).await;
}

/// A master that freezes (SIGSTOP: a hung host or a partition, no reset reaches its
/// clients) while a node is subscribed to a room it serves: once its replica took over,
/// the room's messages reach the node again. The pub/sub client pings every master, and
/// an unanswered ping subscribes everything again (a new client if it stays unanswered);
/// before, the subscription stayed dead on the open socket and the node never knew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_masters_rooms_reach_the_node_again_after_failover() {
    use chat_gateway::engine::Engine;
    use chat_gateway::hub::Hub;
    use e2e::engines::{listen, message, next_msg};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let mut cluster = RedisCluster::start();
    let config = cluster.config(&format!("t{:08x}", rand::random::<u32>()));
    let hub = Arc::new(Hub::default());
    let node: Arc<dyn Engine> = e2e::engines::start(&config, hub.clone()).await;
    let publisher: Arc<dyn Engine> = e2e::engines::start(&config, Arc::new(Hub::default())).await;
    let room = "frozen";
    let (mut rx, _) = listen(&hub, &*node, room, 1).await;
    publisher.publish(message(room, 1)).await.expect("publish");
    assert_eq!(next_msg(&mut rx).await, Some((room.into(), 1)));

    let frozen = tokio::task::spawn_blocking(move || {
        let port = cluster.freeze_master_of_slot(e2e::redis_cluster::slot(room));
        (cluster, port)
    });
    let (cluster, port) = frozen.await.expect("failover");
    eprintln!("froze the master on port {port}; its replica took over");
    // The publisher's command client finds the new master by itself (retried sends).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 2;
    while publisher.publish(message(room, n)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no publish reached the new master"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        n += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let got = loop {
        if let Some(got) = next_msg(&mut rx).await {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "the node never got the room's messages again:\n{}",
            cluster.shard_subscriptions()
        );
    };
    assert_eq!(got.0, room);
    drop(cluster);
}
