//! Graceful drain and reconnect storms, with real gateway processes, a real Redis and the
//! reference client (`e2e::resilient`). Rebalancing: `rebalance.rs`.

use e2e::client::Upgrade;
use e2e::fleet::{check_no_loss, clients, settle_and_stop, wait_until, Verdict};
use e2e::gateways::Gateways;
use e2e::process::GatewayProcess;
use e2e::redis::RedisServer;
use e2e::resilient::{Plan, Resilient};
use e2e::{test_config, Client, TestGateway};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn rolling_restart(signal: &str) -> Verdict {
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
    assert_eq!(t.duplicates_dropped, 0, "{t:?}");
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

/// With nothing to drain the process exits after its accept grace, not at the drain's
/// timeout: an hour, so exiting within the wait is the proof (no clock in the assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_without_connections_exits_promptly() {
    let mut p = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_DRAIN__ACCEPT_GRACE", "200ms"),
        ("CHATGW_DRAIN__TIMEOUT", "1h"),
    ]);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_late_upgrades_and_ends_at_the_timeout_with_forced_closes() {
    let mut cfg = test_config();
    // A second of grace: the probe's readiness read and its connect must fit in it on a
    // loaded machine; evictions then run from 1 s to the timeout.
    cfg.drain.accept_grace = Duration::from_secs(1);
    cfg.drain.evict_rate = 1.0; // far too slow for 10 clients within the timeout
    cfg.drain.timeout = Duration::from_secs(4);
    let (cfg_grace, cfg_timeout) = (cfg.drain.accept_grace, cfg.drain.timeout);
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
        tokio::time::sleep_until((started + cfg_grace + Duration::from_millis(300)).into()).await;
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
    // Ends at its timeout (4 s), by force: evicting at 1/s would take 10 s. The bound on
    // the wait only keeps a hung drain from hanging the test.
    let waited = tokio::time::timeout(cfg_timeout + e2e::client::WAIT, async {
        tokio::join!(drain, probe)
    });
    let (outcome, ()) = waited.await.expect("the drain ends at its timeout");
    assert!(started.elapsed() >= cfg_timeout, "{:?}", started.elapsed());
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
    // The grace has 30 s to run and the drain 60 s: an exit within the wait is the cut.
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(1012));
}
