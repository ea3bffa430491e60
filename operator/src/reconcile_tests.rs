//! Reconcile against a mocked API server (tower-test), asserting the exact requests.

use super::*;
use crate::builders::testing::{cgw, FULL, MINIMAL};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request and the answer the fake API server gives.
pub(crate) struct Step {
    method: Method,
    path: String,
    pub(crate) status: StatusCode,
    /// Answer body; `None` echoes the request body (what an apply returns, near enough).
    reply: Option<Value>,
}

pub(crate) fn step(method: Method, path: &str) -> Step {
    Step {
        method,
        path: path.into(),
        status: StatusCode::OK,
        reply: None,
    }
}

pub(crate) fn not_found(method: Method, path: &str) -> Step {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"});
    Step {
        method,
        path: path.into(),
        status: StatusCode::NOT_FOUND,
        reply: Some(status),
    }
}

pub(crate) fn server_error(method: Method, path: &str) -> Step {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "InternalError", "code": 500, "message": "etcd is on fire"});
    Step {
        method,
        path: path.into(),
        status: StatusCode::INTERNAL_SERVER_ERROR,
        reply: Some(status),
    }
}

pub(crate) fn ok_with(method: Method, path: &str, reply: Value) -> Step {
    Step {
        method,
        path: path.into(),
        status: StatusCode::OK,
        reply: Some(reply),
    }
}

/// Serves `steps` in order, checking each request; returns the JSON bodies received.
pub(crate) fn serve(
    mut handle: Handle,
    steps: Vec<Step>,
) -> tokio::task::JoinHandle<Vec<(String, Value)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, s) in steps.into_iter().enumerate() {
            // A missing request fails the test instead of hanging it.
            let next = tokio::time::timeout(Duration::from_secs(10), handle.next_request()).await;
            let Ok(Some((request, send))) = next else {
                panic!("step {i}: no request came for {} {}", s.method, s.path)
            };
            let uri = request.uri().clone();
            assert_eq!(
                (request.method(), uri.path()),
                (&s.method, s.path.as_str()),
                "step {i}: unexpected request {uri}"
            );
            if s.method == Method::PATCH {
                let q = uri.query().unwrap_or_default();
                assert!(
                    q.contains("fieldManager=chatgateway-operator") && q.contains("force=true"),
                    "step {i}: {q}"
                );
                assert_eq!(
                    request
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok()),
                    Some("application/apply-patch+yaml"),
                    "step {i}: server-side apply"
                );
            }
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let reply = s.reply.clone().unwrap_or_else(|| {
                // A status apply answers with the whole object, metadata included.
                let mut echo = body.clone();
                if let Some(map) = echo.as_object_mut() {
                    map.entry("metadata")
                        .or_insert(json!({"name": "chat", "namespace": "apps"}));
                    map.entry("spec").or_insert(json!({}));
                }
                echo
            });
            seen.push((format!("{} {}", s.method, s.path), body));
            let response = Response::builder()
                .status(s.status)
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response");
            send.send_response(response);
        }
        seen
    })
}

fn context(served: ServedKinds, events: bool) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(
        client,
        served,
        Metrics::new(),
        events.then(|| "operator-0".to_string()),
    );
    (Arc::new(ctx), handle)
}

const NS: &str = "/api/v1/namespaces/apps";
const APPS: &str = "/apis/apps/v1/namespaces/apps";
const HPA: &str = "/apis/autoscaling/v2/namespaces/apps/horizontalpodautoscalers/chat";
const PDB: &str = "/apis/policy/v1/namespaces/apps/poddisruptionbudgets/chat";
const STATUS: &str = "/apis/chatgateway.io/v1alpha1/namespaces/apps/chatgateways/chat/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/apps/events";

fn secret(name: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "apps"},
           "data": {key: "c2VjcmV0"}})
}

fn condition<'a>(status_patch: &'a Value, type_: &str) -> (&'a str, &'a str) {
    let c = status_patch["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status_patch}"));
    (
        c["status"].as_str().unwrap_or(""),
        c["reason"].as_str().unwrap_or(""),
    )
}

fn paths(seen: &[(String, Value)]) -> Vec<&str> {
    seen.iter().map(|(p, _)| p.as_str()).collect()
}

#[tokio::test]
async fn create_applies_children_deletes_the_absent_hpa_and_writes_status() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(
                Method::DELETE,
                &format!("{NS}/configmaps/chat-otel-collector"),
            ),
            not_found(Method::DELETE, HPA),
            step(Method::PATCH, PDB),
            step(Method::PATCH, STATUS),
        ],
    );
    let action = reconcile(Arc::new(cgw(MINIMAL)), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(RESYNC));
    let seen = server.await.expect("server");
    let deployment = &seen[1].1;
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "ChatGateway"
    );
    let status = &seen[6].1;
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(
        status["status"]["selector"],
        "app.kubernetes.io/instance=chat,app.kubernetes.io/name=chat-gateway"
    );
    // Nothing runs the pods in this fake: not ready, rolling out, not degraded.
    assert_eq!(condition(status, "Ready"), ("False", "PodsNotReady"));
    assert_eq!(condition(status, "Progressing"), ("True", "RollingOut"));
    assert_eq!(condition(status, "Degraded"), ("False", "AsExpected"));
    assert!(ctx
        .metrics
        .render()
        .contains("chatgateway_operator_reconciles_total{outcome=\"ok\"} 1"));
}

#[tokio::test]
async fn full_spec_checks_secrets_then_applies_hpa_and_pdb() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![
            ok_with(
                Method::GET,
                &format!("{NS}/secrets/redis"),
                secret("redis", "url"),
            ),
            ok_with(
                Method::GET,
                &format!("{NS}/secrets/jwt"),
                secret("jwt", "secret"),
            ),
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            ok_with(
                Method::GET,
                &format!("{APPS}/deployments/chat"),
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "chat", "namespace": "apps"},
                       "spec": {"replicas": 7, "selector": {}, "template": {}}}),
            ),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(
                Method::DELETE,
                &format!("{NS}/configmaps/chat-otel-collector"),
            ),
            step(Method::PATCH, HPA),
            step(Method::PATCH, PDB),
            step(Method::PATCH, STATUS),
        ],
    );
    reconcile(Arc::new(cgw(FULL)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    let hpa = &seen[7].1;
    assert_eq!(
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"],
        "chatgateway_connections"
    );
    // The live count (set by the HPA) is re-applied, so ownership never lapses.
    assert_eq!(seen[4].1["spec"]["replicas"], 7);
}

#[tokio::test]
async fn update_that_disables_autoscaling_deletes_the_hpa() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(
                Method::DELETE,
                &format!("{NS}/configmaps/chat-otel-collector"),
            ),
            ok_with(
                Method::DELETE,
                HPA,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            step(Method::PATCH, PDB),
            step(Method::PATCH, STATUS),
        ],
    );
    let mut c =
        cgw("gateway: {auth: {mode: insecure}}\nreplicas: 4\nautoscaling: {enabled: false}");
    c.metadata.generation = Some(2);
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    assert_eq!(paths(&seen)[4], format!("DELETE {HPA}"));
    assert_eq!(seen[1].1["spec"]["replicas"], 4);
    assert_eq!(seen[6].1["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn disabled_pdb_is_deleted() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(
                Method::DELETE,
                &format!("{NS}/configmaps/chat-otel-collector"),
            ),
            not_found(Method::DELETE, HPA),
            ok_with(
                Method::DELETE,
                PDB,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            step(Method::PATCH, STATUS),
        ],
    );
    reconcile(
        Arc::new(cgw(
            "gateway: {auth: {mode: insecure}}\ndisruptionBudget: {enabled: false}",
        )),
        ctx,
    )
    .await
    .expect("reconcile");
    server.await.expect("server");
}

#[tokio::test]
async fn missing_secret_is_degraded_with_an_event_and_backs_off() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![
            not_found(Method::GET, &format!("{NS}/secrets/redis")),
            step(Method::POST, EVENTS),
            step(Method::PATCH, STATUS),
        ],
    );
    let c = Arc::new(cgw(FULL));
    let err = reconcile(c.clone(), ctx.clone()).await.unwrap_err();
    assert!(
        matches!(err, Error::SecretRef { ref name, .. } if name == "redis"),
        "{err}"
    );
    let seen = server.await.expect("server");
    let event = &seen[1].1;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("SecretNotFound"))
    );
    assert_eq!(event["regarding"]["name"], "chat");
    assert_eq!(
        condition(&seen[2].1, "Degraded"),
        ("True", "SecretNotFound")
    );
    assert_eq!(condition(&seen[2].1, "Ready"), ("False", "SecretNotFound"));
    // Exponential backoff per gateway.
    let first = error_policy(c.clone(), &err, ctx.clone());
    let second = error_policy(c.clone(), &err, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(10)));
    assert_eq!(second, Action::requeue(Duration::from_secs(20)));
    assert!(ctx
        .metrics
        .render()
        .contains("reason=\"SecretNotFound\"} 1"));
}

#[tokio::test]
async fn secret_without_the_key_is_degraded() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        vec![
            ok_with(
                Method::GET,
                &format!("{NS}/secrets/redis"),
                secret("redis", "other"),
            ),
            step(Method::PATCH, STATUS),
        ],
    );
    let err = reconcile(Arc::new(cgw(FULL)), ctx).await.unwrap_err();
    assert_eq!(err.reason(), "SecretNotFound");
    server.await.expect("server");
}

#[tokio::test]
async fn failed_apply_is_degraded_and_stops_the_reconcile() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            server_error(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::POST, EVENTS),
            step(Method::PATCH, STATUS),
        ],
    );
    let err = reconcile(Arc::new(cgw(MINIMAL)), ctx.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Kube(_)), "{err}");
    let seen = server.await.expect("server");
    assert_eq!(condition(&seen[3].1, "Degraded"), ("True", "ApiError"));
    assert!(ctx
        .metrics
        .render()
        .contains("chatgateway_operator_reconciles_total{outcome=\"error\"} 1"));
}

#[tokio::test]
async fn invalid_spec_touches_no_child() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![step(Method::POST, EVENTS), step(Method::PATCH, STATUS)],
    );
    let err = reconcile(Arc::new(cgw("{}")), ctx).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidSpec");
    let seen = server.await.expect("server");
    assert_eq!(condition(&seen[1].1, "Degraded"), ("True", "InvalidSpec"));
}

#[tokio::test]
async fn unserved_kinds_are_reported_not_fatal() {
    let (ctx, handle) = context(
        ServedKinds {
            hpa: None,
            pdb: None,
            native_sidecars: true,
        },
        false,
    );
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            not_found(Method::GET, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(
                Method::DELETE,
                &format!("{NS}/configmaps/chat-otel-collector"),
            ),
            step(Method::PATCH, STATUS),
        ],
    );
    let c = cgw("gateway: {auth: {mode: insecure}}\nautoscaling: {enabled: true}");
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    let status = &seen[5].1;
    assert_eq!(condition(status, "Degraded"), ("True", "KindNotServed"));
    assert_eq!(
        seen[2].1["spec"]["replicas"], 2,
        "a new Deployment starts at minReplicas"
    );
    let message = status["status"]["conditions"][2]["message"]
        .as_str()
        .unwrap_or("");
    assert!(
        message.contains(
            "HorizontalPodAutoscaler version the operator writes (autoscaling/v2, autoscaling/v2beta2)"
        ),
        "{message}"
    );
    assert!(
        message.contains(
            "PodDisruptionBudget version the operator writes (policy/v1, policy/v1beta1)"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn kubernetes_1_20_gets_the_hpa_and_pdb_in_its_versions() {
    let (ctx, handle) = context(ServedKinds::KUBERNETES_1_20, false);
    let hpa = "/apis/autoscaling/v2beta2/namespaces/apps/horizontalpodautoscalers/chat";
    let pdb = "/apis/policy/v1beta1/namespaces/apps/poddisruptionbudgets/chat";
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            not_found(Method::GET, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(
                Method::DELETE,
                &format!("{NS}/configmaps/chat-otel-collector"),
            ),
            step(Method::PATCH, hpa),
            step(Method::PATCH, pdb),
            step(Method::PATCH, STATUS),
        ],
    );
    let c = cgw("gateway: {auth: {mode: insecure}}\nautoscaling: {enabled: true, maxReplicas: 6}");
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    let (hpa_body, pdb_body) = (&seen[5].1, &seen[6].1);
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
    assert_eq!(condition(&seen[7].1, "Degraded"), ("False", "AsExpected"));
}

#[tokio::test]
async fn current_clusters_get_policy_v1_with_the_eviction_policy() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(
                Method::DELETE,
                &format!("{NS}/configmaps/chat-otel-collector"),
            ),
            not_found(Method::DELETE, HPA),
            step(Method::PATCH, PDB),
            step(Method::PATCH, STATUS),
        ],
    );
    reconcile(Arc::new(cgw(MINIMAL)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    assert_eq!(seen[5].1["apiVersion"], "policy/v1");
    assert_eq!(
        seen[5].1["spec"]["unhealthyPodEvictionPolicy"],
        "AlwaysAllow"
    );
}

fn resource_list(group_version: &str, plural: &str, kind: &str) -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
           "resources": [{"name": plural, "singularName": "", "namespaced": true,
                          "kind": kind, "verbs": ["get"]}]})
}

fn version(minor: &str) -> Value {
    json!({"major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.0"), "gitCommit": "",
           "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "",
           "platform": "linux/amd64"})
}

#[tokio::test]
async fn discovery_picks_the_newest_served_version() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    // Kubernetes 1.20: autoscaling/v2 and policy/v1 do not exist yet.
    let server = serve(
        handle,
        vec![
            not_found(Method::GET, "/apis/autoscaling/v2"),
            ok_with(
                Method::GET,
                "/apis/autoscaling/v2beta2",
                resource_list(
                    "autoscaling/v2beta2",
                    "horizontalpodautoscalers",
                    "HorizontalPodAutoscaler",
                ),
            ),
            not_found(Method::GET, "/apis/policy/v1"),
            ok_with(
                Method::GET,
                "/apis/policy/v1beta1",
                resource_list(
                    "policy/v1beta1",
                    "poddisruptionbudgets",
                    "PodDisruptionBudget",
                ),
            ),
            ok_with(Method::GET, "/version", version("20")),
        ],
    );
    let served = ServedKinds::discover(&client).await.expect("discover");
    assert_eq!(served, ServedKinds::KUBERNETES_1_20);
    server.await.expect("server");
}

#[tokio::test]
async fn discovery_tells_served_from_unserved_kinds() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = serve(
        handle,
        vec![
            not_found(Method::GET, "/apis/autoscaling/v2"),
            // The group version exists but without the resource.
            ok_with(
                Method::GET,
                "/apis/autoscaling/v2beta2",
                json!({"kind": "APIResourceList", "apiVersion": "v1",
                       "groupVersion": "autoscaling/v2beta2", "resources": []}),
            ),
            ok_with(
                Method::GET,
                "/apis/policy/v1",
                resource_list("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
            ),
            ok_with(Method::GET, "/version", version("28")),
        ],
    );
    let served = ServedKinds::discover(&client).await.expect("discover");
    assert_eq!(
        served,
        ServedKinds {
            hpa: None,
            pdb: Some("policy/v1"),
            native_sidecars: false,
        }
    );
    server.await.expect("server");
}

#[tokio::test]
async fn ready_when_the_deployment_reports_every_pod_ready() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    // The apply answers with the live Deployment, status included.
    let live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": "apps", "generation": 4},
        "spec": {"replicas": 2, "selector": {}, "template": {}},
        "status": {"observedGeneration": 4, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}});
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            ok_with(Method::PATCH, &format!("{APPS}/deployments/chat"), live),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(
                Method::DELETE,
                &format!("{NS}/configmaps/chat-otel-collector"),
            ),
            not_found(Method::DELETE, HPA),
            step(Method::PATCH, PDB),
            step(Method::PATCH, STATUS),
        ],
    );
    reconcile(Arc::new(cgw(MINIMAL)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    let status = &seen[6].1;
    assert_eq!(condition(status, "Ready"), ("True", "AllPodsReady"));
    assert_eq!(
        condition(status, "Progressing"),
        ("False", "RolloutComplete")
    );
    assert_eq!(condition(status, "Degraded"), ("False", "AsExpected"));
    assert_eq!(
        (
            status["status"]["replicas"].as_i64(),
            status["status"]["readyReplicas"].as_i64()
        ),
        (Some(2), Some(2))
    );
}

const COLLECTOR_CM: &str = "/api/v1/namespaces/apps/configmaps/chat-otel-collector";

#[tokio::test]
async fn collector_config_map_is_applied_before_the_deployment() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            step(Method::PATCH, COLLECTOR_CM),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(Method::DELETE, HPA),
            step(Method::PATCH, PDB),
            step(Method::PATCH, STATUS),
        ],
    );
    reconcile(Arc::new(cgw(crate::builders::testing::SIDECARS)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    assert!(seen[1].1["data"]["collector.yaml"]
        .as_str()
        .is_some_and(|c| c.contains("jaeger-collector.observability:4317")));
    let pod = &seen[2].1["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "otel-collector");
    assert_eq!(pod["initContainers"][0]["restartPolicy"], "Always");
    assert_eq!(pod["containers"][1]["name"], "bot");
    assert_eq!(condition(&seen[6].1, "Degraded"), ("False", "AsExpected"));
}

#[tokio::test]
async fn disabling_the_collector_deletes_its_config_map() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            ok_with(
                Method::DELETE,
                COLLECTOR_CM,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            not_found(Method::DELETE, HPA),
            step(Method::PATCH, PDB),
            step(Method::PATCH, STATUS),
        ],
    );
    let spec = crate::builders::testing::SIDECARS.replace("enabled: true", "enabled: false");
    let mut c = cgw(&spec);
    c.metadata.generation = Some(2);
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    assert_eq!(paths(&seen)[3], format!("DELETE {COLLECTOR_CM}"));
    let pod = &seen[1].1["spec"]["template"]["spec"];
    assert!(pod.get("initContainers").is_none(), "{pod}");
    assert_eq!(seen[6].1["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn sidecar_name_clash_is_reported_in_status_and_touches_no_child() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![step(Method::POST, EVENTS), step(Method::PATCH, STATUS)],
    );
    let c = cgw("gateway: {auth: {mode: insecure}}\nsidecars: [{name: gateway, image: x}]");
    let err = reconcile(Arc::new(c), ctx).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidSpec");
    let seen = server.await.expect("server");
    assert_eq!(condition(&seen[1].1, "Degraded"), ("True", "InvalidSpec"));
    let message = seen[1].1["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string();
    assert!(message.contains("sidecars[0].name"), "{message}");
}

#[tokio::test]
async fn without_native_sidecars_the_collector_is_a_plain_container_and_reported() {
    let (ctx, handle) = context(
        ServedKinds {
            native_sidecars: false,
            ..ServedKinds::ALL
        },
        false,
    );
    let server = serve(
        handle,
        vec![
            step(Method::PATCH, &format!("{NS}/configmaps/chat-config")),
            step(Method::PATCH, COLLECTOR_CM),
            step(Method::PATCH, &format!("{APPS}/deployments/chat")),
            step(Method::PATCH, &format!("{NS}/services/chat")),
            not_found(Method::DELETE, HPA),
            step(Method::PATCH, PDB),
            step(Method::PATCH, STATUS),
        ],
    );
    reconcile(Arc::new(cgw(crate::builders::testing::SIDECARS)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    let pod = &seen[2].1["spec"]["template"]["spec"];
    assert!(pod.get("initContainers").is_none(), "{pod}");
    let names: Vec<_> = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["gateway", "otel-collector", "bot"]);
    assert!(pod["containers"][1].get("restartPolicy").is_none());
    assert_eq!(
        condition(&seen[6].1, "Degraded"),
        ("True", "NativeSidecarsNotSupported")
    );
}
