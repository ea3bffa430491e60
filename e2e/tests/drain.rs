//! Graceful drain, rebalancing and reconnect storms, with real gateway processes, a real
//! Redis and the reference client (`e2e::resilient`).

use e2e::fleet;
use e2e::gateways::Gateways;
use e2e::process::GatewayProcess;
use e2e::redis::RedisServer;
use e2e::resilient::{Plan, Resilient};
use e2e::{test_config, Client, TestGateway};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every acknowledged message reached every member subscribed when it was acknowledged
/// (and DMs their user), with no gap, nothing unrecovered and nothing stored twice.
fn check_no_loss(records: &[fleet::Finished]) -> (usize, u64) {
    let v = fleet::verdict(records, false);
    assert!(v.problems.is_empty(), "{:#?}", v.problems);
    (v.acked, v.duplicates_dropped)
}

async fn rolling_restart(signal: &str) {
    let redis = RedisServer::start();
    let mut cluster = Gateways::start(
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
    let cs = fleet::spawn("u", &urls, n, 20, Some(Duration::from_millis(700)));
    wait_until("all clients joined", Duration::from_secs(60), || {
        cs.iter().all(|(_, _, c)| c.with(|r| r.ready))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        let addr = cluster.procs[i].addr;
        cluster.procs[i].signal(signal);
        assert!(
            cluster.procs[i]
                .wait_exit(Duration::from_secs(30))
                .is_some()
                || !cluster.procs[i].alive(),
            "gw {i} exited"
        );
        cluster.restart(addr, i);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let records = fleet::settle_and_stop(cs, Duration::from_secs(3)).await;
    let (acked, dups) = check_no_loss(&records);
    assert!(
        acked > 1000,
        "enough traffic flowed during the restarts: {acked}"
    );
    eprintln!("rolling restart ({signal}): {acked} acknowledged messages checked, {dups} duplicates dropped by clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_sigterm_loses_nothing() {
    rolling_restart("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_sigkill_loses_nothing_acknowledged() {
    rolling_restart("KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_rate_bounds_the_reconnect_rate() {
    let redis = RedisServer::start();
    let rate = 20.0;
    let mut cluster = Gateways::start(
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
            Resilient::spawn(Plan {
                user: format!("e{i}"),
                urls: first.clone(),
                rooms: vec!["evict".into()],
                send_every: None,
                dm_to: vec![],
                max_backoff: Duration::from_secs(1),
            })
        })
        .collect();
    wait_until("clients joined", Duration::from_secs(30), || {
        cs.iter().all(|c| c.with(|r| r.ready))
    })
    .await;
    let on_first = cluster.connections(0) as usize;
    cluster.procs[0].signal("TERM");
    assert!(cluster.procs[0]
        .wait_exit(Duration::from_secs(30))
        .is_some());
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
    let mut cluster = Gateways::start(&redis, 1, &extra);
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
            (format!("r{i}"), plan.rooms.clone(), Resilient::spawn(plan))
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
    let records = fleet::settle_and_stop(cs, Duration::from_secs(3)).await;
    let (acked, _) = check_no_loss(&records);
    assert!(acked > 100, "traffic flowed while rebalancing: {acked}");
    assert!(cluster.procs[0].metric("chatgateway_rebalance_shed_total") >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_is_admitted_at_the_cluster_rate() {
    let redis = RedisServer::start();
    let rate = 150u32;
    let mut cluster = Gateways::start(
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
            Resilient::spawn(Plan {
                user: format!("s{i}"),
                urls: only_first.clone(),
                rooms: vec![format!("storm{}", i % 50)],
                send_every: None,
                dm_to: vec![],
                max_backoff: Duration::from_secs(3),
            })
        })
        .collect();
    wait_until("all connected", Duration::from_secs(90), || {
        cs.iter().all(|c| c.with(|r| r.ready && r.connected))
    })
    .await;
    // Kill the process holding about half of them: they all reconnect at once.
    cluster.procs[0].signal("KILL");
    let _ = cluster.procs[0].wait_exit(Duration::from_secs(10));
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
    for c in &cs {
        c.with(|r| {
            times.extend(r.connects.iter().skip(1).map(|(_, wall)| *wall));
            resumed += r.resumes;
            refused += r.refused;
        });
    }
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
        let refused = Client::connect(&gw.ws_url("user=late"))
            .await
            .err()
            .expect("refused after the grace");
        assert!(refused.starts_with("HTTP 503"), "{refused}");
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
