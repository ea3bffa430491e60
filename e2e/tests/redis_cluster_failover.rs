//! Gateway processes on a real Redis Cluster while it changes under them: rooms on
//! different masters, clients sending through every gateway, then a slot migration
//! (`redis-cli --cluster reshard`) and the kill of a master (its replica promoted).
//! Every acknowledged message must reach every member, or the member must see the room
//! start a new epoch (the gap signalled); the gateways are never restarted.

use chat_gateway::engine::redis::inbox_tag;
use e2e::gateways::Gateways;
use e2e::redis_cluster::{command, slot, RedisCluster};
use e2e::traffic::Traffic;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A name `make(k)` for the first k whose slot satisfies `ok`.
fn pick(
    make: impl Fn(u32) -> String,
    slot_of: impl Fn(&str) -> u16,
    ok: impl Fn(u16) -> bool,
) -> String {
    (0..100_000)
        .map(make)
        .find(|n| ok(slot_of(n)))
        .expect("a name in the wanted slots")
}

/// Readiness fails after 3 s without Redis; DM senders are not held to a quota.
const GATEWAY_ENV: &[(&str, &str)] = &[
    ("CHATGW_REDIS__READINESS_GRACE", "3s"),
    ("CHATGW_NAMESPACES", "[{prefix: 'user:', dmQuota: 0}]"),
    // The redis crate's cluster client logs every slot refresh: without this, a failure's
    // log tail holds nothing else.
    ("RUST_LOG", "info,redis::cluster_handling=error"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_ride_out_a_reshard_and_a_master_kill() {
    let cluster = Arc::new(Mutex::new(RedisCluster::start()));
    let (env, masters) = {
        let c = cluster.lock().expect("cluster");
        (c.env(), c.masters())
    };
    assert_eq!(
        masters.len(),
        3,
        "{}",
        cluster.lock().expect("cluster").views()
    );
    let gws = Gateways::start_on(&env, 3, GATEWAY_ENV);
    let urls = gws.urls();
    let master_of = |s: u16| cluster.lock().expect("cluster").master_of_slot(s);
    // Slot 0 to 199 move in the reshard below: one room lives there, the others on the
    // two other masters, and a DM inbox lives on the master that is killed.
    let moving = pick(|k| format!("mig{k}"), slot, |s| s < 150);
    let source = master_of(slot(&moving));
    let others: Vec<u16> = masters
        .iter()
        .map(|m| m.1)
        .filter(|p| *p != source)
        .collect();
    let stay = pick(|k| format!("stay{k}"), slot, |s| master_of(s) == others[0]);
    let doomed = pick(|k| format!("doom{k}"), slot, |s| master_of(s) == others[1]);
    let inbox_slot = |u: &str| slot(&inbox_tag(&format!("user:{u}")));
    let dm_doomed = pick(
        |k| format!("dd{k}"),
        inbox_slot,
        |s| master_of(s) == others[1],
    );
    let dm_other = pick(
        |k| format!("do{k}"),
        inbox_slot,
        |s| master_of(s) != others[1],
    );
    let rooms = vec![moving.clone(), stay, doomed.clone()];
    let traffic = Traffic::start(
        &urls,
        &rooms,
        &[dm_doomed, dm_other],
        Duration::from_millis(20),
    )
    .await;
    traffic
        .wait_for_progress(100, Duration::from_secs(20))
        .await;

    // 1. Move slots 0..199 (the moving room's among them) to another master. That master
    //    refuses SSUBSCRIBE for a while (an ACL; SPUBLISH inside the publish script still
    //    runs): messages are stored and published there while no gateway is subscribed
    //    yet, so they reach members only through the gap fill after the subscription is
    //    made again. The refusal lasts until every gateway gave up on its pub/sub client
    //    and started a new one.
    let c = cluster.clone();
    let to = others[0];
    let acl = |rule: &str| {
        let done = command(to, &["ACL", "SETUSER", "default", rule]);
        assert!(done.is_ok(), "ACL SETUSER {rule}: {done:?}");
    };
    acl("-ssubscribe");
    tokio::task::spawn_blocking(move || c.lock().expect("cluster").reshard(source, to, 200))
        .await
        .expect("reshard");
    assert_eq!(master_of(slot(&moving)), to, "the room's slot moved");
    traffic
        .wait_for_progress(100, Duration::from_secs(20))
        .await;
    // Refused long enough, each gateway replaces its pub/sub client, whose every channel
    // is then subscribed (and filled) again while that master still refuses.
    for (i, gw) in gws.procs.iter().enumerate() {
        let renewed = || gw.log_tail().contains("connecting a new client");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !renewed() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(renewed(), "gateway {i} renewed its pub/sub client");
    }
    traffic
        .wait_for_progress(100, Duration::from_secs(20))
        .await;
    acl("+ssubscribe");
    traffic
        .wait_for_progress(100, Duration::from_secs(20))
        .await;

    // 2. Kill the master of the doomed room and inbox; its replica takes over. The replica
    //    is behind (its link cut for a while first): the new master's top is below what
    //    the gateways saw, so the epoch rule must start a new epoch, and gateways that
    //    re-subscribe late must still get all of it.
    let c = cluster.clone();
    let killed = tokio::task::spawn_blocking(move || {
        let mut c = c.lock().expect("cluster");
        c.kill_master_of_slot(slot(&doomed), Some(Duration::from_millis(400)))
    })
    .await
    .expect("failover");
    assert_ne!(master_of(slot(&rooms[2])), killed, "a replica was promoted");
    traffic
        .wait_for_progress(150, Duration::from_secs(30))
        .await;

    let out = traffic.finish().await;
    eprintln!(
        "acked {} errors {:?} signalled {} epochs {:?}",
        out.acked, out.errors, out.signalled, out.epochs
    );
    if !out.lost.is_empty() {
        // Where each gateway's subscriptions ended up (3 per channel: one per gateway).
        eprintln!(
            "shard channels per node:\n{}",
            cluster.lock().expect("cluster").shard_subscriptions()
        );
    }
    out.assert_nothing_lost(&gws);
    let doomed_epochs = out.epochs.get(&rooms[2]).map_or(0, |e| e.len());
    assert!(
        doomed_epochs >= 2,
        "the lagging replica's room got a new epoch: {doomed_epochs}"
    );
    assert!(out.acked >= 450, "traffic flowed: {}", out.acked);
    for (i, gw) in gws.procs.iter().enumerate() {
        assert!(
            gw.metric("chatgateway_connections") >= 0.0,
            "gateway {i} still serves"
        );
    }
}
