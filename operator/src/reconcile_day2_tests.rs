//! Day-two request sequences: API versions, the replicas hand-off to the HPA, objects the
//! gateway does not own, Events and status from the children (Secret rotation:
//! reconcile_secret_tests.rs).

use super::*;

const REDIS: &str =
    "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {urlSecretRef: {name: redis, key: url}}}";

fn redis_secret() -> Step {
    secret_read("redis", "url", "redis://r:6379")
}

/// The live Deployment this gateway owns, with `replicas` owned by `managers`.
fn live_deployment(replicas: i32, managers: &[&str], template_hash: &str) -> Value {
    let managed: Vec<_> = managers
        .iter()
        .map(|m| {
            json!({"manager": m, "operation": "Apply", "apiVersion": "apps/v1",
                        "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}})
        })
        .collect();
    let mut meta = owned_meta("chat");
    meta["managedFields"] = json!(managed);
    meta["annotations"] = json!({"chatgateway.io/template-hash": template_hash});
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
           "spec": {"replicas": replicas, "selector": {}, "template": {}}})
}

fn lookups_with_live(live: Value) -> Vec<Step> {
    let mut steps = lookups();
    steps[2] = ok_with(Method::GET, DEPLOY, live);
    steps
}

#[tokio::test]
async fn unserved_kinds_are_reported_not_fatal() {
    let served = ServedKinds {
        hpa: None,
        pdb: None,
        ..ServedKinds::ALL
    };
    let (ctx, handle) = context(served, false);
    let server = serve(
        handle,
        with(
            vec![redis_secret()],
            vec![
                not_found(Method::GET, CM),
                not_found(Method::GET, COLLECTOR_CM),
                not_found(Method::GET, DEPLOY),
                not_found(Method::GET, SVC),
                step(Method::PATCH, CM),
                step(Method::PATCH, DEPLOY),
                handover(DEPLOY),
                step(Method::PATCH, SVC),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let c = cgw(&format!("{REDIS}\nautoscaling: {{enabled: true}}"));
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    let status = &seen[9].1;
    assert_eq!(condition(status, "Degraded"), ("True", "KindNotServed"));
    assert_eq!(seen[6].1["spec"]["replicas"], 2, "minReplicas");
    let text = message(status, "Degraded");
    assert!(
        text.contains("HorizontalPodAutoscaler version the operator writes (autoscaling/v2, autoscaling/v2beta2)"),
        "{text}"
    );
    assert!(
        text.contains(
            "PodDisruptionBudget version the operator writes (policy/v1, policy/v1beta1)"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn kubernetes_1_20_gets_the_hpa_and_pdb_in_its_versions() {
    let (ctx, handle) = context(ServedKinds::KUBERNETES_1_20, false);
    let hpa = "/apis/autoscaling/v2beta2/namespaces/apps/horizontalpodautoscalers/chat";
    let pdb = "/apis/policy/v1beta1/namespaces/apps/poddisruptionbudgets/chat";
    let mut steps = vec![redis_secret()];
    for p in [CM, COLLECTOR_CM, DEPLOY, SVC, hpa, pdb] {
        steps.push(not_found(Method::GET, p));
    }
    steps.extend([
        step(Method::PATCH, CM),
        step(Method::PATCH, DEPLOY),
        handover(DEPLOY),
        step(Method::PATCH, SVC),
        step(Method::PATCH, hpa),
        step(Method::PATCH, pdb),
        step(Method::PATCH, STATUS),
    ]);
    let server = serve(handle, steps);
    let c = cgw(&format!(
        "{REDIS}\nautoscaling: {{enabled: true, maxReplicas: 6}}"
    ));
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    let (hpa_body, pdb_body) = (&seen[11].1, &seen[12].1);
    assert_eq!(hpa_body["apiVersion"], "autoscaling/v2beta2");
    assert_eq!(hpa_body["kind"], "HorizontalPodAutoscaler");
    assert_eq!(hpa_body["spec"]["maxReplicas"], 6);
    assert_eq!(
        hpa_body["spec"]["metrics"][0]["pods"]["metric"]["name"],
        "chatgateway_connections"
    );
    assert_eq!(
        hpa_body["metadata"]["ownerReferences"][0]["kind"],
        "ChatGateway"
    );
    assert_eq!(pdb_body["apiVersion"], "policy/v1beta1");
    assert_eq!(pdb_body["spec"]["maxUnavailable"], 1);
    assert!(
        pdb_body["spec"].get("unhealthyPodEvictionPolicy").is_none(),
        "{pdb_body}"
    );
    assert_eq!(condition(&seen[13].1, "Degraded"), ("False", "AsExpected"));
}

#[tokio::test]
async fn current_clusters_get_policy_v1_with_the_eviction_policy() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        with(lookups(), applies(&[CM, DEPLOY, SVC, PDB, STATUS])),
    );
    reconcile(Arc::new(cgw(MINIMAL)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    assert_eq!(seen[9].1["apiVersion"], "policy/v1");
    assert_eq!(
        seen[9].1["spec"]["unhealthyPodEvictionPolicy"],
        "AlwaysAllow"
    );
}

/// The discovery document of `group_version`, serving one namespaced resource.
fn serves(group_version: &str, plural: &str, kind: &str) -> Step {
    let list = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                      "resources": [{"name": plural, "singularName": "", "namespaced": true,
                                     "kind": kind, "verbs": ["get"]}]});
    ok_with(Method::GET, &format!("/apis/{group_version}"), list)
}

fn version(minor: &str) -> Step {
    let info = json!({"major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.0"),
                      "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "",
                      "compiler": "", "platform": "linux/amd64"});
    ok_with(Method::GET, "/version", info)
}

/// What the operator discovers from a server answering exactly `steps`.
async fn discovered(steps: Vec<Step>) -> ServedKinds {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = serve(handle, steps);
    let served = ServedKinds::discover(&Client::new(service, "default")).await;
    server.await.expect("server");
    served.expect("discover")
}

#[tokio::test]
async fn discovery_picks_the_newest_served_version() {
    // Kubernetes 1.20: autoscaling/v2 and policy/v1 do not exist yet.
    let served = discovered(vec![
        not_found(Method::GET, "/apis/autoscaling/v2"),
        serves(
            "autoscaling/v2beta2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
        ),
        not_found(Method::GET, "/apis/policy/v1"),
        serves(
            "policy/v1beta1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
        ),
        version("20"),
    ])
    .await;
    assert_eq!(served, ServedKinds::KUBERNETES_1_20);
}

#[tokio::test]
async fn discovery_tells_served_from_unserved_kinds() {
    let served = discovered(vec![
        not_found(Method::GET, "/apis/autoscaling/v2"),
        // The group version exists but without the resource.
        ok_with(
            Method::GET,
            "/apis/autoscaling/v2beta2",
            json!({"kind": "APIResourceList", "apiVersion": "v1",
                   "groupVersion": "autoscaling/v2beta2", "resources": []}),
        ),
        serves("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
        version("28"),
    ])
    .await;
    assert_eq!(
        served,
        ServedKinds {
            hpa: None,
            pdb: Some("policy/v1"),
            native_sidecars: false,
            pdb_eviction_policy: true,
        }
    );
}

#[tokio::test]
async fn policy_v1_before_1_26_gets_no_eviction_policy() {
    // 1.21 to 1.25 serve policy/v1 without the field: an apply with it is refused.
    let served = discovered(vec![
        not_found(Method::GET, "/apis/autoscaling/v2"),
        not_found(Method::GET, "/apis/autoscaling/v2beta2"),
        serves("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
        version("25"),
    ])
    .await;
    assert_eq!(
        (served.pdb, served.pdb_eviction_policy),
        (Some("policy/v1"), false)
    );
    let (ctx, handle) = context(served, false);
    let mut steps = lookups();
    steps.remove(4); // no HPA version served: no lookup
    let server = serve(
        handle,
        with(steps, applies(&[CM, DEPLOY, SVC, PDB, STATUS])),
    );
    reconcile(Arc::new(cgw(MINIMAL)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    let pdb = &seen[8].1;
    assert_eq!(
        (&pdb["apiVersion"], &pdb["spec"]["maxUnavailable"]),
        (&json!("policy/v1"), &json!(1))
    );
    assert!(
        pdb["spec"].get("unhealthyPodEvictionPolicy").is_none(),
        "{pdb}"
    );
}

#[tokio::test]
async fn turning_autoscaling_off_deletes_the_hpa_first_and_keeps_the_live_count() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    // The HPA had scaled to 30 pods; the spec turns autoscaling off without `replicas`.
    let mut steps = lookups_with_live(live_deployment(30, &["kube-controller-manager"], "x"));
    steps[4] = owned(HPA, "chat");
    let server = serve(
        handle,
        with(
            with(vec![redis_secret()], steps),
            vec![
                step(Method::PATCH, CM),
                deleted(HPA),
                step(Method::PATCH, DEPLOY),
                step(Method::PATCH, SVC),
                step(Method::PATCH, PDB),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let mut c = cgw(&format!("{REDIS}\nautoscaling: {{enabled: false}}"));
    c.metadata.generation = Some(2);
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    assert_eq!(paths(&seen)[8], format!("DELETE {HPA}"));
    assert_eq!(
        seen[9].1["spec"]["replicas"], 30,
        "the 30 pods stay: no drop to a default"
    );
    assert_eq!(seen[12].1["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn while_the_hpa_owns_replicas_the_apply_leaves_them_out() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let mut steps = lookups_with_live(live_deployment(7, &["kube-controller-manager"], "x"));
    steps[4] = owned(HPA, "chat");
    let server = serve(
        handle,
        with(
            with(vec![redis_secret()], steps),
            applies(&[CM, DEPLOY, SVC, HPA, PDB, STATUS]),
        ),
    );
    let c = cgw(&format!("{REDIS}\nautoscaling: {{enabled: true}}"));
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    let spec = &seen[8].1["spec"];
    assert!(spec.get("replicas").is_none(), "{spec}");
    // The strategy follows the live count: 7 + 3 fit under maxReplicas 10.
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 3);
}

#[tokio::test]
async fn turning_autoscaling_on_hands_the_live_count_over_before_dropping_it() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let steps = lookups_with_live(live_deployment(4, &[FIELD_MANAGER], "x"));
    let server = serve(
        handle,
        with(
            with(vec![redis_secret()], steps),
            vec![
                step(Method::PATCH, CM),
                handover(DEPLOY),
                step(Method::PATCH, DEPLOY),
                step(Method::PATCH, SVC),
                step(Method::PATCH, HPA),
                step(Method::PATCH, PDB),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let c = cgw(&format!("{REDIS}\nautoscaling: {{enabled: true}}"));
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    assert_eq!(seen[8].1["spec"], json!({"replicas": 4}));
    assert!(seen[9].1["spec"].get("replicas").is_none());
}

#[tokio::test]
async fn a_hand_off_the_hpa_already_won_is_not_forced() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let steps = lookups_with_live(live_deployment(4, &[FIELD_MANAGER], "x"));
    // Between the read and the hand-off the HPA scaled: the non-forced apply conflicts,
    // and nothing undoes the HPA's write.
    let mut lost = conflict(Method::PATCH, DEPLOY);
    lost.apply_as = (HANDOVER_MANAGER, false);
    let server = serve(
        handle,
        with(
            with(vec![redis_secret()], steps),
            vec![
                step(Method::PATCH, CM),
                lost,
                step(Method::PATCH, DEPLOY),
                step(Method::PATCH, SVC),
                step(Method::PATCH, HPA),
                step(Method::PATCH, PDB),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let c = cgw(&format!("{REDIS}\nautoscaling: {{enabled: true}}"));
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    assert!(seen[9].1["spec"].get("replicas").is_none());
}

#[tokio::test]
async fn an_object_it_does_not_own_is_never_taken_over() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let mut steps = lookups();
    // Someone's own Service named like the gateway.
    steps[3] = ok_with(
        Method::GET,
        SVC,
        json!({"metadata": {"name": "chat", "namespace": "apps", "uid": "theirs"}}),
    );
    let server = serve(
        handle,
        with(
            steps,
            vec![step(Method::POST, EVENTS), step(Method::PATCH, STATUS)],
        ),
    );
    let err = reconcile(Arc::new(cgw(MINIMAL)), ctx).await.unwrap_err();
    assert_eq!(err.reason(), "NotOwned");
    let seen = server.await.expect("server");
    assert!(
        !paths(&seen)
            .iter()
            .any(|p| p.starts_with("PATCH /api/v1") || p.starts_with("PATCH /apis/apps")),
        "nothing applied: {:?}",
        paths(&seen)
    );
    let event = &seen[6].1;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("NotOwned"))
    );
    let note = event["note"].as_str().unwrap_or("");
    assert!(note.contains("Service apps/chat"), "{note}");
    assert!(note.contains("it has no owner"), "{note}");
    assert_eq!(condition(&seen[7].1, "Degraded"), ("True", "NotOwned"));
    assert_eq!(condition(&seen[7].1, "Reconciled"), ("False", "NotOwned"));
}

#[tokio::test]
async fn an_hpa_it_does_not_own_is_not_deleted() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let mut steps = lookups();
    steps[4] = ok_with(
        Method::GET,
        HPA,
        json!({"metadata": {"name": "chat", "namespace": "apps", "uid": "theirs",
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": "other", "uid": "x", "controller": true}]}}),
    );
    let server = serve(
        handle,
        with(steps, applies(&[CM, DEPLOY, SVC, PDB, STATUS])),
    );
    reconcile(Arc::new(cgw(MINIMAL)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    assert!(!paths(&seen).iter().any(|p| p.starts_with("DELETE")));
}

/// One reconcile of FULL against Secrets holding `jwt_key`; the Deployment apply.
#[tokio::test]
async fn scaling_and_rolling_are_announced_as_normal_events() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let steps = lookups_with_live(live_deployment(2, &[FIELD_MANAGER], "an-older-template"));
    let server = serve(
        handle,
        with(
            with(vec![redis_secret()], steps),
            vec![
                step(Method::PATCH, CM),
                step(Method::PATCH, DEPLOY),
                step(Method::PATCH, SVC),
                step(Method::PATCH, PDB),
                step(Method::POST, EVENTS),
                step(Method::POST, EVENTS),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let c = cgw(&format!("{REDIS}\nreplicas: 5"));
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    let reasons: Vec<_> = seen[11..13]
        .iter()
        .map(|(_, e)| (e["type"].as_str(), e["reason"].as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (Some("Normal"), Some("Scaled")),
            (Some("Normal"), Some("RollingUpdate"))
        ]
    );
    assert!(seen[11].1["note"]
        .as_str()
        .is_some_and(|n| n.contains("from 2 to 5")));
}

#[tokio::test]
async fn an_hpa_that_cannot_read_its_metric_degrades_the_gateway() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let hpa_reply = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": owned_meta("chat"), "spec": {},
        "status": {"conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "ok"},
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
             "message": "unable to get metric chatgateway_connections: no custom metrics API"}]}});
    let server = serve(
        handle,
        with(
            with(vec![redis_secret()], lookups()),
            vec![
                step(Method::PATCH, CM),
                step(Method::PATCH, DEPLOY),
                handover(DEPLOY),
                step(Method::PATCH, SVC),
                ok_with(Method::PATCH, HPA, hpa_reply),
                step(Method::PATCH, PDB),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let c = cgw(&format!("{REDIS}\nautoscaling: {{enabled: true}}"));
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    let status = &seen[13].1;
    assert_eq!(
        condition(status, "Degraded"),
        ("True", "AutoscalerInactive")
    );
    assert!(message(status, "Degraded").contains("no custom metrics API"));
    assert_eq!(
        condition(status, "Reconciled"),
        ("True", "ReconcileSucceeded"),
        "the apply itself worked"
    );
}
