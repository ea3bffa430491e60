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
