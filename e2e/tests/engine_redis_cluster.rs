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
