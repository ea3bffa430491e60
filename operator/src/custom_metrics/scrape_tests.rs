//! Targets, totals, staleness, and rounds that take longer than a snapshot may be old.

use super::*;
use serde_json::json;

fn gateway(ns: &str, name: &str) -> Arc<ChatGateway> {
    Arc::new(
        serde_json::from_value(
            json!({"apiVersion": "chatgateway.io/v1alpha1", "kind": "ChatGateway",
            "metadata": {"name": name, "namespace": ns, "labels": {"team": "chat"}}, "spec": {}}),
        )
        .expect("gateway"),
    )
}

fn pod(
    ns: &str,
    name: &str,
    instance: &str,
    phase: &str,
    ip: Option<&str>,
    port: Option<i32>,
) -> Arc<Pod> {
    let ports = port
        .map(|p| json!([{"name": "http", "containerPort": p}]))
        .unwrap_or(json!([]));
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns,
            "labels": {"app.kubernetes.io/name": "chat-gateway", "app.kubernetes.io/instance": instance}},
            "spec": {"containers": [{"name": "gateway", "ports": ports}]},
            "status": {"phase": phase, "podIP": ip}}))
        .expect("pod"),
    )
}

#[test]
fn targets_are_running_pods_of_known_gateways_on_their_http_port() {
    let gateways = [gateway("apps", "chat")];
    let pods = [
        pod(
            "apps",
            "chat-a",
            "chat",
            "Running",
            Some("10.0.0.5"),
            Some(9000),
        ),
        pod("apps", "chat-b", "chat", "Running", Some("10.0.0.6"), None),
        pod("apps", "chat-pending", "chat", "Pending", None, Some(8080)),
        pod(
            "apps",
            "other-a",
            "other",
            "Running",
            Some("10.0.0.7"),
            None,
        ),
        pod(
            "elsewhere",
            "chat-x",
            "chat",
            "Running",
            Some("10.0.0.8"),
            None,
        ),
    ];
    let (targets, known) = targets(&pods, &gateways, Timestamp::UNIX_EPOCH);
    let got: Vec<_> = targets
        .iter()
        .map(|t| (t.sample.name.as_str(), t.addr.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            ("chat-a", "10.0.0.5:9000".to_string()),
            ("chat-b", "10.0.0.6:8080".to_string())
        ]
    );
    assert_eq!(known.len(), 1);
    assert_eq!(
        known[0].labels.get("team").map(String::as_str),
        Some("chat")
    );
}

#[test]
fn totals_need_every_pod_and_stale_snapshots_are_not_served() {
    let sample = |name: &str, n: Option<u64>| PodSample {
        namespace: "apps".into(),
        name: name.into(),
        gateway: "chat".into(),
        labels: BTreeMap::new(),
        connections: n,
        at: Timestamp::UNIX_EPOCH,
    };
    let mut s = Snapshot {
        pods: vec![sample("a", Some(3)), sample("b", None)],
        gateways: vec![GatewaySample {
            namespace: "apps".into(),
            name: "chat".into(),
            labels: BTreeMap::new(),
        }],
        at: Timestamp::UNIX_EPOCH,
    };
    assert_eq!(
        s.summary("apps", "chat"),
        Summary {
            read: 1,
            unread: 1,
            total: 3
        }
    );
    assert_eq!(
        s.total("apps", "chat"),
        None,
        "an unread pod makes the total unknown"
    );
    s.pods.pop();
    assert_eq!(s.total("apps", "chat"), Some(3));
    assert_eq!(s.total("apps", "nope"), None);
    let values = Values::new(Duration::ZERO);
    values.set(s.clone());
    std::thread::sleep(Duration::from_millis(5));
    assert!(values.current().pods.is_empty(), "older than max_age");
    let values = Values::new(Duration::from_secs(60));
    values.set(s.clone());
    assert_eq!(*values.current(), s);
}

fn store<K>(objects: Vec<Arc<K>>) -> (Store<K>, kube::runtime::reflector::store::Writer<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = kube::runtime::reflector::store::<K>();
    for o in objects {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply((*o).clone()));
    }
    (reader, writer)
}

fn counter() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(prometheus::Opts::new("scrapes", "test"), &["outcome"])
        .expect("counter")
}

/// Pods on lost nodes (a listener that never answers), so many that reading them all
/// takes longer than a snapshot may be old, join a gateway whose one live pod has been
/// read: that pod's reading is served all along, never an empty list.
#[tokio::test]
async fn a_slow_round_never_blanks_pods_that_were_read() {
    let interval = crate::custom_metrics::readings::MIN_INTERVAL;
    let (live, lost) = (
        crate::custom_metrics::testing::serve_metrics(b"chatgateway_connections 7\n".to_vec())
            .await,
        crate::custom_metrics::testing::serve_nothing().await,
    );
    let (gateways, _gateway_writer) = store(vec![gateway("apps", "chat")]);
    let live_pod = pod(
        "apps",
        "z-live",
        "chat",
        "Running",
        Some("127.0.0.1"),
        Some(i32::from(live.port())),
    );
    let (pods, mut pod_writer) = store(vec![live_pod]);
    let values = Values::new(max_age(interval));
    let scraper = tokio::spawn(run(pods, gateways, values.clone(), interval, counter()));
    let served = |values: &Values| {
        values
            .current()
            .pods
            .iter()
            .find(|p| p.name == "z-live")
            .and_then(|p| p.connections)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while served(&values) != Some(7) {
        assert!(Instant::now() < deadline, "the live pod is never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Reading them all, a timeout each, 64 at a time, would take 8 s (without a bound on
    // the round), longer than the 4.5 s a snapshot is served for.
    let lost_pods: usize = 1024;
    let per_round = lost_pods.div_ceil(CONCURRENCY) as u32 * read_timeout(interval);
    assert!(per_round > max_age(interval) + interval * 3);
    for i in 0..lost_pods {
        let p = pod(
            "apps",
            &format!("a-lost-{i:04}"),
            "chat",
            "Running",
            Some("127.0.0.1"),
            Some(i32::from(lost.port())),
        );
        pod_writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply((*p).clone()));
    }
    // Long enough for an unbounded round to let the snapshot go stale (at most one
    // interval to start it, max_age after the publish before it), with time to spare.
    let watch = max_age(interval) + interval * 3;
    let until = Instant::now() + watch;
    let mut saw_lost = false;
    while Instant::now() < until {
        assert_eq!(
            served(&values),
            Some(7),
            "the live pod's reading was not served while lost pods were read"
        );
        saw_lost |= values.current().pods.len() == lost_pods + 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_lost, "the lost pods were never listed (as unread)");
    let snapshot = values.current();
    assert!(snapshot
        .pods
        .iter()
        .filter(|p| p.name.starts_with("a-lost-"))
        .all(|p| p.connections.is_none()));
    scraper.abort();
}

#[test]
fn timeouts_back_off_and_the_read_go_first() {
    let timed_out = |previous: Option<&Last>| Last::failed(previous, true);
    let mut last = None;
    let mut skips = Vec::new();
    for _ in 0..6 {
        let next = timed_out(last.as_ref());
        if let Last::Failed { skip, .. } = next {
            skips.push(skip);
        }
        last = Some(next);
    }
    assert_eq!(skips, [1, 2, 4, 8, 12, 12]);
    assert!(matches!(
        Last::failed(last.as_ref(), false),
        Last::Failed {
            timeouts: 0,
            skip: 0
        }
    ));
    let read = Last::Read {
        connections: 1,
        at: Timestamp::UNIX_EPOCH,
        when: Instant::now(),
    };
    assert!(Last::rank(Some(&read)) < Last::rank(None));
    assert!(Last::rank(None) < Last::rank(last.as_ref()));
}

/// A pod that timed out is not asked in the next round (it is listed, unread), then is
/// asked again; a pod the round did not get to keeps its reading from before, unless
/// that reading is too old.
#[tokio::test]
async fn a_timed_out_pod_is_skipped_and_an_unanswered_one_keeps_its_reading() {
    let lost = crate::custom_metrics::testing::serve_nothing().await;
    let target = |name: &str| Target {
        sample: PodSample {
            namespace: "apps".into(),
            name: name.into(),
            gateway: "chat".into(),
            labels: BTreeMap::new(),
            connections: None,
            at: Timestamp::now(),
        },
        addr: lost,
    };
    let scrapes = counter();
    let errors = || scrapes.with_label_values(&["error"]).get();
    let mut memory = HashMap::new();
    let (timeout, budget, max_age) = (
        Duration::from_millis(200),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let mut rounds = Vec::new();
    for _ in 0..4 {
        let samples = round(
            vec![target("lost")],
            &mut memory,
            timeout,
            budget,
            max_age,
            &scrapes,
        )
        .await;
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].connections, None);
        rounds.push(errors());
    }
    // Timed out; skipped one round; timed out again; skipped two.
    assert_eq!(rounds, [1, 1, 2, 2]);

    // A round with no time left gets to nobody: the reading from before stands...
    let key = ("apps".to_string(), "held".to_string());
    let at = Timestamp::UNIX_EPOCH;
    memory.insert(
        key.clone(),
        Last::Read {
            connections: 9,
            at,
            when: Instant::now(),
        },
    );
    let samples = round(
        vec![target("held")],
        &mut memory,
        timeout,
        Duration::ZERO,
        max_age,
        &scrapes,
    )
    .await;
    assert_eq!((samples[0].connections, samples[0].at), (Some(9), at));
    // ... while it is younger than a snapshot may be.
    std::thread::sleep(Duration::from_millis(5));
    let samples = round(
        vec![target("held")],
        &mut memory,
        timeout,
        Duration::ZERO,
        Duration::ZERO,
        &scrapes,
    )
    .await;
    assert_eq!(samples[0].connections, None);
}
