//! Rebalancing: a pod well above the cluster mean sheds connections through goaway and
//! resume, without loss, and never while a pod drains. Real gateway processes (or
//! in-process gateways) on a real Redis, JWT auth, the reference client.

use e2e::fleet::{check_no_loss, settle_and_stop, verdict, wait_until, Running};
use e2e::gateways::Gateways;
use e2e::redis::RedisServer;
use e2e::resilient::{Plan, Resilient};
use e2e::{test_config, TestGateway};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One gateway process with `n` reference clients (rooms of 10, a DM neighbour each) and
/// two addresses where more will start (a Service's pods that do not exist yet).
async fn fleet_on_one_pod(
    redis: &RedisServer,
    n: usize,
    extra: &[(&str, &str)],
) -> (Gateways, Vec<Running>, [SocketAddr; 2]) {
    let cluster = Gateways::start_jwt(redis, 1, extra);
    let a0 = cluster.procs[0].addr;
    let a1 = SocketAddr::from(([127, 0, 0, 1], e2e::process::free_port()));
    let a2 = SocketAddr::from(([127, 0, 0, 1], e2e::process::free_port()));
    let urls: Vec<String> = [a0, a1, a2]
        .iter()
        .map(|a| format!("ws://{a}/ws"))
        .collect();
    let cs: Vec<Running> = (0..n)
        .map(|i| {
            let plan = Plan {
                user: format!("r{i}"),
                urls: urls.clone(),
                rooms: vec![format!("rb{}", i % (n / 10).max(1))],
                send_every: Some(Duration::from_millis(800)),
                dm_to: vec![format!("r{}", (i + 1) % n)],
                max_backoff: Duration::from_secs(1),
            };
            let rooms = plan.rooms.clone();
            let client = Resilient::spawn_with(plan, cluster.credentials());
            (format!("r{i}"), rooms, client)
        })
        .collect();
    wait_until("all on the first pod", Duration::from_secs(60), || {
        cs.iter()
            .all(|(_, _, c)| c.with(|r| r.ready && r.connected))
    })
    .await;
    assert_eq!(cluster.connections(0) as usize, n);
    (cluster, cs, [a1, a2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_spreads_connections_to_new_pods_without_loss() {
    let redis = RedisServer::start();
    let extra = [
        ("CHATGW_REBALANCE__ABS_THRESHOLD", "4"),
        ("CHATGW_REBALANCE__REL_THRESHOLD", "0.2"),
        ("CHATGW_REBALANCE__RATE", "10"),
        ("CHATGW_REBALANCE__INTERVAL", "1s"),
        ("CHATGW_DRAIN__RECONNECT_JITTER", "200ms"),
    ];
    let n = 60;
    let (mut cluster, cs, [a1, a2]) = fleet_on_one_pod(&redis, n, &extra).await;
    cluster.restart(a1, 1);
    cluster.restart(a2, 2);
    let started = Instant::now();
    let spread_ok = || {
        let counts: Vec<f64> = (0..3).map(|i| cluster.connections(i)).collect();
        let max = counts.iter().cloned().fold(f64::MIN, f64::max);
        let min = counts.iter().cloned().fold(f64::MAX, f64::min);
        (
            max - min <= 12.0 && counts.iter().sum::<f64>() as usize == n,
            counts,
        )
    };
    loop {
        let (ok, counts) = spread_ok();
        if ok {
            eprintln!("balanced after {:?}: {counts:?}", started.elapsed());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "not balanced: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let records = settle_and_stop(cs).await;
    let t = check_no_loss(&records);
    assert!(t.acked > 100, "traffic flowed while rebalancing: {t:?}");
    assert_eq!(t.ended_without_goaway, 0, "shed with a goaway first: {t:?}");
    assert!(cluster.procs[0].metric("chatgateway_rebalance_shed_total") >= 20.0);
}

/// The cluster suite's HPA flow in small: the clients are stopped and judged while the
/// first pod still sheds (the new pods have their first connections, far from the mean),
/// with the default 2 s reconnect jitter. Clients told to go in the last seconds are
/// still away or resuming then; the verdict must judge each client once it is back in
/// its rooms, and every one must have resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stopped_while_a_pod_still_sheds_are_judged_after_their_resume() {
    let redis = RedisServer::start();
    let extra = [
        ("CHATGW_REBALANCE__ABS_THRESHOLD", "4"),
        ("CHATGW_REBALANCE__REL_THRESHOLD", "0.2"),
        ("CHATGW_REBALANCE__RATE", "4"),
        ("CHATGW_REBALANCE__INTERVAL", "1s"),
    ];
    let (mut cluster, cs, [a1, a2]) = fleet_on_one_pod(&redis, 60, &extra).await;
    cluster.restart(a1, 1);
    cluster.restart(a2, 2);
    // 60 against a mean of 20: 40 to shed at 4/s, for 10 s. Stop once the first few were told to go.
    wait_until("the first pod shedding", Duration::from_secs(45), || {
        cluster.procs[0].metric("chatgateway_rebalance_shed_total") >= 4.0
    })
    .await;
    let shed_at_stop = cluster.procs[0].metric("chatgateway_rebalance_shed_total");
    let records = settle_and_stop(cs).await;
    let shed = cluster.procs[0].metric("chatgateway_rebalance_shed_total");
    assert!(
        shed >= shed_at_stop + 8.0,
        "the first pod went on shedding while the clients stopped ({shed_at_stop} -> {shed})"
    );
    let v = verdict(&records, true);
    assert!(
        v.problems.is_empty(),
        "{} problems, first 20: {:#?}",
        v.problems.len(),
        &v.problems[..v.problems.len().min(20)]
    );
    assert!(v.reconnected >= 10, "clients moved: {v:?}");
}

/// In-process gateways on one Redis (the node registry is shared), rebalancing every
/// 200 ms above a low threshold.
async fn redis_gateway(redis: &RedisServer, prefix: &str, id: &str) -> TestGateway {
    let mut cfg = test_config();
    cfg.engine = chat_gateway::config::EngineKind::Redis;
    cfg.redis.url = redis.url();
    cfg.redis.key_prefix = prefix.into();
    cfg.node.id = id.into();
    cfg.rebalance.abs_threshold = 2;
    cfg.rebalance.rel_threshold = 0.2;
    cfg.rebalance.rate = 50.0;
    cfg.rebalance.interval = Duration::from_millis(200);
    // A drain that stays in its accept grace until forced (the grace must be shorter
    // than the drain's deadline).
    cfg.drain.accept_grace = Duration::from_secs(120);
    cfg.drain.timeout = Duration::from_secs(180);
    TestGateway::start(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_never_sheds_while_a_pod_drains() {
    let redis = RedisServer::start();
    let prefix = format!("rb{:08x}", rand::random::<u32>());
    let idle = redis_gateway(&redis, &prefix, "idle").await;
    let draining = redis_gateway(&redis, &prefix, "draining").await;
    // The drain stays in its accept grace until forced.
    let force = tokio_util::sync::CancellationToken::new();
    let drain = {
        let force = force.clone();
        let node = draining.gateway.node.clone();
        tokio::spawn(async move { chat_gateway::drain::drain(&node, &force).await })
    };
    let busy = redis_gateway(&redis, &prefix, "busy").await;
    // Wait until the busy node sees the drain in the registry (reports every 2 s).
    let engine = busy.gateway.node.engine.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = engine.nodes().await.expect("node registry");
        if nodes.iter().any(|n| n.id == "draining" && n.draining)
            && nodes.iter().any(|n| n.id == "idle")
        {
            break;
        }
        assert!(Instant::now() < deadline, "drain never reported: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut clients = Vec::new();
    for i in 0..30 {
        clients.push(busy.connect(&format!("b{i}")).await);
    }
    // 30 against a mean of 10: far above both thresholds, but a pod drains. Ten
    // rebalance intervals and two load reports pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(busy.metric("chatgateway_rebalance_shed_total").await, 0.0);
    assert_eq!(busy.gateway.node.connection_count(), 30);
    // The control: once the draining pod is gone from the registry (its entry expires),
    // the same imbalance is shed.
    force.cancel();
    drain.await.expect("drain task");
    draining.stop().await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while busy.gateway.node.connection_count() > 20 {
        assert!(
            Instant::now() < deadline,
            "never rebalanced after the drain ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(busy.metric("chatgateway_rebalance_shed_total").await >= 1.0);
    drop(clients);
    busy.stop().await;
    idle.stop().await;
}
