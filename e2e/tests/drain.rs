//! Graceful drain, rebalancing and reconnect storms, with real gateway processes, a real
//! Redis and the reference client (`e2e::resilient`).

use e2e::client::Upgrade;
use e2e::gateways::Gateways;
use e2e::process::GatewayProcess;
use e2e::redis::RedisServer;
use e2e::resilient::{Plan, Record, Resilient};
use e2e::{test_config, Client, TestGateway};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Starts `n` reference clients in `rooms` rooms (size n/rooms), each also sending DMs.
fn clients(
    cluster: &Gateways,
    urls: &[String],
    n: usize,
    rooms: usize,
    send_every: Option<Duration>,
) -> Vec<(String, Vec<String>, Resilient)> {
    (0..n)
        .map(|i| {
            let user = format!("u{i}");
            let my_rooms = vec![format!("room{}", i % rooms)];
            let plan = Plan {
                user: user.clone(),
                urls: urls.to_vec(),
                rooms: my_rooms.clone(),
                send_every,
                dm_to: vec![format!("u{}", (i + 1) % n), format!("u{}", (i + 7) % n)],
                max_backoff: Duration::from_secs(2),
            };
            (
                user,
                my_rooms,
                Resilient::spawn_with(plan, cluster.credentials()),
            )
        })
        .collect()
}

async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops sending, lets in-flight messages arrive, then stops every client.
async fn settle_and_stop(cs: Vec<(String, Vec<String>, Resilient)>) -> Vec<Finished> {
    for (_, _, c) in &cs {
        c.stop_sending();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut records = Vec::new();
    for (user, rooms, c) in cs {
        records.push((user, rooms, c.stop().await));
    }
    records
}

/// Every acknowledged message reached every member subscribed when it was acknowledged
/// (and DMs their user), with no gap and nothing reported unrecovered.
/// A stopped client: user, rooms, observations.
type Finished = (String, Vec<String>, Arc<Mutex<Record>>);

/// What the clients saw in total, for the checks a test adds.
#[derive(Debug, Default)]
struct Totals {
    acked: usize,
    duplicates: u64,
    goaways: u64,
    ended_without_goaway: u64,
    refused: u64,
}

fn check_no_loss(records: &[Finished]) -> Totals {
    let mut members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (user, rooms, _)) in records.iter().enumerate() {
        for r in rooms {
            members.entry(r.clone()).or_default().push(i);
        }
        members.entry(format!("user:{user}")).or_default().push(i);
    }
    let recs: Vec<_> = records
        .iter()
        .map(|(_, _, r)| r.lock().unwrap_or_else(|p| p.into_inner()))
        .collect();
    let mut t = Totals::default();
    for (i, rec) in recs.iter().enumerate() {
        assert!(rec.gaps.is_empty(), "client {i} saw gaps: {:?}", rec.gaps);
        assert!(
            rec.not_recovered.is_empty(),
            "client {i}: not recovered {:?}",
            rec.not_recovered
        );
        assert_eq!(rec.stray_replies, 0, "client {i}: replies to no command");
        assert!(
            rec.retry_after
                .iter()
                .all(|s| s.is_some_and(|s| (1..=3).contains(&s))),
            "client {i}: a 503 without a 1-3 s Retry-After: {:?}",
            rec.retry_after
        );
        t.duplicates += rec.duplicates;
        t.goaways += rec.goaways;
        t.ended_without_goaway += rec.ended_without_goaway;
        t.refused += rec.refused;
        for (room, seq) in &rec.acked {
            t.acked += 1;
            for &m in members.get(room).map(Vec::as_slice).unwrap_or(&[]) {
                if recs[m].joined_at.get(room).is_some_and(|j| seq <= j) {
                    continue; // acknowledged before that member joined
                }
                let got = recs[m].received.get(room).is_some_and(|s| s.contains(seq));
                assert!(
                    got,
                    "{room} seq {seq} (acked by client {i}) never reached client {m}"
                );
            }
        }
    }
    t
}

async fn rolling_restart(signal: &str) -> Totals {
    let redis = RedisServer::start();
    let mut cluster = Gateways::start_jwt(
        &redis,
        3,
        &[
            ("CHATGW_DRAIN__ACCEPT_GRACE", "300ms"),
            ("CHATGW_DRAIN__EVICT_RATE", "200"),
            ("CHATGW_DRAIN__TIMEOUT", "15s"),
            ("CHATGW_DRAIN__RECONNECT_JITTER", "500ms"),
            ("CHATGW_REBALANCE__ENABLED", "false"),
        ],
    );
    let urls = cluster.urls();
    let n = 200;
    let cs = clients(&cluster, &urls, n, 20, Some(Duration::from_millis(700)));
    wait_until("all clients joined", Duration::from_secs(60), || {
        cs.iter().all(|(_, _, c)| c.with(|r| r.ready))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        let addr = cluster.procs[i].addr;
        if signal == "KILL" {
            cluster.procs[i].kill_and_reap();
        } else {
            cluster.procs[i].signal(signal);
            assert_eq!(
                cluster.procs[i].wait_exit(Duration::from_secs(30)),
                Some(0),
                "gw {i} exits cleanly after SIG{signal}"
            );
        }
        cluster.restart(addr, i);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        cs.iter().all(|(_, _, c)| !c.crashed()),
        "a reference client crashed"
    );
    let records = settle_and_stop(cs).await;
    let totals = check_no_loss(&records);
    assert!(
        totals.acked > 1000,
        "enough traffic flowed during the restarts: {totals:?}"
    );
    eprintln!("rolling restart (SIG{signal}): {totals:?}");
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_sigterm_loses_nothing() {
    let t = rolling_restart("TERM").await;
    // A drain tells every connection to go before closing it, and resume positions make
    // the replay start exactly after what each client had.
    assert!(t.goaways >= 200, "every client was told to go: {t:?}");
    assert_eq!(t.ended_without_goaway, 0, "{t:?}");
    assert_eq!(t.duplicates, 0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_sigkill_loses_nothing_acknowledged() {
    let t = rolling_restart("KILL").await;
    assert!(
        t.ended_without_goaway > 50,
        "killed connections end without goaway: {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_rate_bounds_the_reconnect_rate() {
    let redis = RedisServer::start();
    let rate = 20.0;
    let mut cluster = Gateways::start_jwt(
        &redis,
        2,
        &[
            ("CHATGW_DRAIN__ACCEPT_GRACE", "0s"),
            ("CHATGW_DRAIN__EVICT_RATE", "20"),
            ("CHATGW_DRAIN__RECONNECT_JITTER", "0s"),
            ("CHATGW_REBALANCE__ENABLED", "false"),
        ],
    );
    let first = vec![cluster.urls()[0].clone(), cluster.urls()[1].clone()];
    // Everyone starts on process 0 (the first URL), then moves to process 1.
    let cs: Vec<Resilient> = (0..80)
        .map(|i| {
            let plan = Plan {
                user: format!("e{i}"),
                urls: first.clone(),
                rooms: vec!["evict".into()],
                send_every: None,
                dm_to: vec![],
                max_backoff: Duration::from_secs(1),
            };
            Resilient::spawn_with(plan, cluster.credentials())
        })
        .collect();
    wait_until("clients joined", Duration::from_secs(30), || {
        cs.iter().all(|c| c.with(|r| r.ready))
    })
    .await;
    let on_first = cluster.connections(0) as usize;
    cluster.procs[0].signal("TERM");
    assert_eq!(cluster.procs[0].wait_exit(Duration::from_secs(30)), Some(0));
    wait_until("all reconnected", Duration::from_secs(30), || {
        cs.iter().all(|c| c.with(|r| r.connected))
    })
    .await;
    // Disconnect times of the clients that were on process 0, in 1 s windows.
    let mut times: Vec<Instant> = cs
        .iter()
        .flat_map(|c| c.with(|r| r.disconnects.clone()))
        .collect();
    times.sort();
    assert_eq!(
        times.len(),
        on_first,
        "each client on the drained process moved once"
    );
    let max_in_window = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        max_in_window as f64 <= rate * 1.5,
        "{max_in_window} reconnects in one second (rate {rate})"
    );
    let span = *times.last().expect("times") - times[0];
    assert!(
        span >= Duration::from_secs_f64((on_first as f64 / rate) * 0.7),
        "evictions spread over {span:?}"
    );
    for c in cs {
        let rec = c.stop().await;
        let rec = rec.lock().unwrap_or_else(|p| p.into_inner());
        assert!(rec.not_recovered.is_empty());
        assert_eq!(rec.ended_without_goaway, 0, "evicted with a goaway first");
    }
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
    let mut cluster = Gateways::start_jwt(&redis, 1, &extra);
    let a0 = cluster.procs[0].addr;
    // Two more addresses, known to clients up front (as a Service would be).
    let a1 = SocketAddr::from(([127, 0, 0, 1], e2e::process::free_port()));
    let a2 = SocketAddr::from(([127, 0, 0, 1], e2e::process::free_port()));
    let urls: Vec<String> = [a0, a1, a2]
        .iter()
        .map(|a| format!("ws://{a}/ws"))
        .collect();
    let n = 60;
    let cs: Vec<(String, Vec<String>, Resilient)> = (0..n)
        .map(|i| {
            let plan = Plan {
                user: format!("r{i}"),
                urls: vec![urls[0].clone(), urls[1].clone(), urls[2].clone()],
                rooms: vec![format!("rb{}", i % 6)],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_is_admitted_at_the_cluster_rate() {
    let redis = RedisServer::start();
    let rate = 150u32;
    let mut cluster = Gateways::start_jwt(
        &redis,
        2,
        &[
            ("CHATGW_ADMISSION__RATE", "150"),
            ("CHATGW_REBALANCE__ENABLED", "false"),
        ],
    );
    let n = 1000;
    let only_first = vec![cluster.urls()[0].clone(), cluster.urls()[1].clone()];
    let cs: Vec<Resilient> = (0..n)
        .map(|i| {
            let plan = Plan {
                user: format!("s{i}"),
                urls: only_first.clone(),
                rooms: vec![format!("storm{}", i % 50)],
                send_every: None,
                dm_to: vec![],
                max_backoff: Duration::from_secs(3),
            };
            Resilient::spawn_with(plan, cluster.credentials())
        })
        .collect();
    wait_until("all connected", Duration::from_secs(90), || {
        cs.iter().all(|c| c.with(|r| r.ready && r.connected))
    })
    .await;
    // Kill the process holding about half of them: they all reconnect at once.
    cluster.procs[0].kill_and_reap();
    // Connected and resumed (a client is "connected" a moment before its resume is done).
    wait_until(
        "all reconnected and resumed",
        Duration::from_secs(90),
        || {
            cs.iter().all(|c| {
                c.with(|r| r.connected && r.resumes as usize + 1 == r.connects.len().max(1))
            })
        },
    )
    .await;
    // Client-side times of the reconnects (welcome received). The server counts per
    // wall-clock second and a welcome can land just after its second ends, so the check is
    // on the average rate over the whole storm, with one second of slack.
    let mut times: Vec<std::time::SystemTime> = Vec::new();
    let mut resumed = 0;
    let mut refused = 0;
    let mut retry_after = Vec::new();
    for c in &cs {
        c.with(|r| {
            times.extend(r.connects.iter().skip(1).map(|(_, wall)| *wall));
            resumed += r.resumes;
            refused += r.refused;
            retry_after.extend(r.retry_after.iter().copied());
        });
    }
    assert_eq!(retry_after.len() as u64, refused);
    assert!(
        retry_after
            .iter()
            .all(|s| s.is_some_and(|s| (1..=3).contains(&s))),
        "every 503 carries Retry-After 1-3 s: {retry_after:?}"
    );
    times.sort();
    let moved = times.len();
    assert!(moved >= 300, "a storm happened: {moved} reconnects");
    assert!(refused > 0, "some were told to come back later");
    let span = times[moved - 1]
        .duration_since(times[0])
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let allowed = (span + 1.0) * f64::from(rate) * 1.1;
    assert!(
        moved as f64 <= allowed,
        "{moved} reconnects in {span:.1} s: above the cluster rate {rate}/s"
    );
    assert!(
        span >= moved as f64 / f64::from(rate) - 1.5,
        "{moved} admitted within {span:.1} s: not spread out"
    );
    assert_eq!(resumed as usize, moved, "every reconnect resumed");
    for c in cs {
        let rec = c.stop().await;
        assert!(rec
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .not_recovered
            .is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_without_connections_exits_promptly() {
    let mut p = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_DRAIN__ACCEPT_GRACE", "200ms"),
    ]);
    let started = Instant::now();
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_late_upgrades_and_ends_at_the_timeout_with_forced_closes() {
    let mut cfg = test_config();
    cfg.drain.accept_grace = Duration::from_millis(300);
    cfg.drain.evict_rate = 1.0; // far too slow for 10 clients within the timeout
    cfg.drain.timeout = Duration::from_secs(3);
    let gw = TestGateway::start(cfg).await;
    let mut cs = Vec::new();
    for i in 0..10 {
        cs.push(gw.connect(&format!("stay{i}")).await);
    }
    let node = gw.gateway.node.clone();
    let force = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let drain = {
        let gateway = &gw.gateway;
        async move { gateway.drain(&force).await }
    };
    let probe = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            e2e::http_get(gw.gateway.addr, "/readyz").await.0,
            503,
            "readiness off at once"
        );
        assert!(
            Client::connect(&gw.ws_url("user=early")).await.is_ok(),
            "accepted during the grace"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let req = gw.ws_url("user=late").into_client_request().expect("req");
        let Upgrade::Refused(refused) = Client::upgrade(req).await else {
            panic!("an upgrade after the accept grace must be refused");
        };
        assert_eq!(refused.status, 503, "{refused:?}");
        assert!(
            refused.retry_after().is_some_and(|s| (1..=3).contains(&s)),
            "a draining gateway says when to retry (1-3 s): {refused:?}"
        );
    };
    let (outcome, ()) = tokio::join!(drain, probe);
    assert!(
        started.elapsed() >= Duration::from_secs(3) && started.elapsed() < Duration::from_secs(6)
    );
    assert!(outcome.forced > 0, "{outcome:?}");
    assert!(outcome.evicted >= 2, "{outcome:?}");
    assert_eq!(node.connection_count(), 0);
    let forced = gw.metric("chatgateway_drain_forced_closes_total").await;
    assert_eq!(forced, outcome.forced as f64);
    drop(cs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_cuts_the_drain_short() {
    let mut p = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_DRAIN__ACCEPT_GRACE", "30s"),
        ("CHATGW_DRAIN__TIMEOUT", "60s"),
    ]);
    let mut c = Client::connect(&p.ws_url("user=stubborn"))
        .await
        .expect("connect");
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.alive(), "still in its accept grace");
    let started = Instant::now();
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(1012));
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
    cfg.drain.accept_grace = Duration::from_secs(120);
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
