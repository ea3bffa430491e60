//! The engine on a real local Redis with Sentinel (one master, one replica, three
//! sentinels): the conformance suite unchanged; then gateway processes with clients
//! sending through them lose the Sentinel they ask first, and ride out a `SENTINEL
//! FAILOVER` and the kill of a master whose replica had fallen behind, without a restart.
//! Every acknowledged message reaches every member, or the member sees its room go on in
//! a new epoch (the epoch rule meeting the new master's older data). One Sentinel set-up
//! for the binary: the steps run in order.

use chat_gateway::engine::conformance::run_all;
use e2e::engines::Fresh;
use e2e::gateways::Gateways;
use e2e::redis_cluster::command;
use e2e::redis_sentinel::RedisSentinel;
use e2e::traffic::Traffic;
use std::time::Duration;

/// Readiness fails after 3 s without Redis; DM senders are not held to a quota.
const GATEWAY_ENV: &[(&str, &str)] = &[
    ("CHATGW_REDIS__READINESS_GRACE", "3s"),
    ("CHATGW_NAMESPACES", "[{prefix: 'user:', dmQuota: 0}]"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_engine_passes_the_conformance_suite_and_follows_failovers() {
    let mut sentinel = RedisSentinel::start();
    run_all(&Fresh(sentinel.config("unused"))).await;

    let gws = Gateways::start_on(&sentinel.env(), 2, GATEWAY_ENV);
    let rooms = vec!["lobby".to_string(), "ops".to_string()];
    let dm_users = vec!["ann".to_string(), "bob".to_string()];
    let traffic = Traffic::start(&gws.urls(), &rooms, &dm_users, Duration::from_millis(20)).await;
    traffic
        .wait_for_progress(100, Duration::from_secs(20))
        .await;

    // The sentinel the gateways ask first goes away: they must ask the others.
    sentinel.kill_sentinel(0);

    // 1. A planned failover: the replica becomes the master, the gateways follow. The
    //    replica refuses SUBSCRIBE for a while (an ACL; PUBLISH inside the publish script
    //    still runs), so what is published on it before the gateways' subscriptions are
    //    made again reaches members only through the gap fill.
    let first = sentinel.master_port();
    let next = sentinel.replica_port();
    let acl = |rule: &str| {
        let done = command(next, &["ACL", "SETUSER", "default", rule]);
        assert!(done.is_ok(), "ACL SETUSER {rule}: {done:?}");
    };
    acl("-subscribe");
    let promoted = tokio::task::block_in_place(|| sentinel.failover());
    assert_eq!(next, promoted);
    assert_ne!(first, promoted);
    traffic
        .wait_for_progress(100, Duration::from_secs(30))
        .await;
    acl("+subscribe");
    traffic
        .wait_for_progress(100, Duration::from_secs(30))
        .await;

    // 2. The replica falls behind, then the master dies: the replica that takes over
    //    lacks the last messages every member already has.
    tokio::task::block_in_place(|| sentinel.cut_replication());
    traffic
        .wait_for_progress(100, Duration::from_secs(20))
        .await;
    let killed = sentinel.master_port();
    let now = tokio::task::block_in_place(|| sentinel.kill_master());
    assert_ne!(killed, now, "the lagging replica was promoted");
    traffic
        .wait_for_progress(150, Duration::from_secs(30))
        .await;

    let out = traffic.finish().await;
    eprintln!(
        "acked {} errors {:?} signalled {} {:?} epochs {:?}",
        out.acked, out.errors, out.signalled, out.signalled_by, out.epochs
    );
    out.assert_nothing_lost(&gws);
    // The new master's data was older than what the gateways had seen of every room and
    // inbox with traffic during the cut: each went on in a new epoch.
    for room in rooms
        .iter()
        .cloned()
        .chain(dm_users.iter().map(|u| format!("user:{u}")))
    {
        let epochs = out.epochs.get(&room).map_or(0, |e| e.len());
        assert!(
            epochs >= 2,
            "{room}: a new epoch after the lagging replica took over ({epochs})"
        );
    }
}
