//! Reconcile against a mocked API server (tower-test), asserting the exact requests.
//! Fixtures keep each test to its request sequence: `lookups` for the ownership checks
//! every reconcile starts with, `step`/`ok_with`/`not_found` for the rest.

use super::*;
use crate::builders::testing::{cgw, FULL, MINIMAL, SIDECARS};
use crate::handoff::HANDOVER_MANAGER;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

#[path = "reconcile_api_tests.rs"]
mod api;
#[path = "reconcile_config_tests.rs"]
mod configs;
#[path = "reconcile_day2_tests.rs"]
mod day2;
#[path = "reconcile_secret_tests.rs"]
mod secrets;
#[path = "reconcile_sidecar_tests.rs"]
mod sidecars;

pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request and the answer the fake API server gives.
pub(crate) struct Step {
    method: Method,
    path: String,
    pub(crate) status: StatusCode,
    /// Answer body; `None` echoes the request body (what an apply returns, near enough).
    reply: Option<Value>,
    /// For a PATCH: the field manager and whether it forces (default: the operator, forced).
    pub(crate) apply_as: (&'static str, bool),
}

pub(crate) fn step(method: Method, path: &str) -> Step {
    Step {
        method,
        path: path.into(),
        status: StatusCode::OK,
        reply: None,
        apply_as: (FIELD_MANAGER, true),
    }
}

/// A request the API server refuses with a Status of `code` and `reason`.
fn refused(method: Method, path: &str, code: StatusCode, reason: &str, message: &str) -> Step {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "reason": reason, "code": code.as_u16(), "message": message});
    Step {
        status: code,
        reply: Some(body),
        ..step(method, path)
    }
}

pub(crate) fn not_found(method: Method, path: &str) -> Step {
    refused(method, path, StatusCode::NOT_FOUND, "NotFound", "not found")
}

pub(crate) fn server_error(method: Method, path: &str) -> Step {
    let code = StatusCode::INTERNAL_SERVER_ERROR;
    refused(method, path, code, "InternalError", "etcd is on fire")
}

pub(crate) fn conflict(method: Method, path: &str) -> Step {
    refused(method, path, StatusCode::CONFLICT, "Conflict", "conflict")
}

/// A validation failure, e.g. a server-side apply that would create an incomplete object.
pub(crate) fn invalid(method: Method, path: &str) -> Step {
    let code = StatusCode::UNPROCESSABLE_ENTITY;
    refused(
        method,
        path,
        code,
        "Invalid",
        "spec.containers: Required value",
    )
}

pub(crate) fn ok_with(method: Method, path: &str, reply: Value) -> Step {
    Step {
        reply: Some(reply),
        ..step(method, path)
    }
}

/// A DELETE the API server carries out.
pub(crate) fn deleted(path: &str) -> Step {
    let done = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
    ok_with(Method::DELETE, path, done)
}

/// The non-forced apply of `spec.replicas` under the hand-off manager.
pub(crate) fn handover(path: &str) -> Step {
    Step {
        apply_as: (HANDOVER_MANAGER, false),
        ..step(Method::PATCH, path)
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
            // A path ending in `*` matches by prefix: the config's ConfigMap is named by
            // its content's hash (the builders' tests check the name itself).
            let path = match s.path.strip_suffix('*') {
                Some(prefix) if uri.path().starts_with(prefix) => s.path.as_str(),
                _ => uri.path(),
            };
            assert_eq!(
                (request.method(), path),
                (&s.method, s.path.as_str()),
                "step {i}: unexpected request {uri}"
            );
            if s.method == Method::PATCH {
                let q = uri.query().unwrap_or_default();
                let (manager, force) = s.apply_as;
                assert!(
                    q.contains(&format!("fieldManager={manager}&"))
                        || q.ends_with(&format!("fieldManager={manager}")),
                    "step {i}: {q}"
                );
                assert_eq!(q.contains("force=true"), force, "step {i}: {q}");
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

pub(crate) fn context(served: ServedKinds, events: bool) -> (Arc<Context>, Handle) {
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

pub(crate) const NS: &str = "/api/v1/namespaces/apps";
/// The config's ConfigMap, whatever its content hash.
pub(crate) const CM: &str = "/api/v1/namespaces/apps/configmaps/chat-config-*";
pub(crate) const COLLECTOR_CM: &str = "/api/v1/namespaces/apps/configmaps/chat-otel-collector";
pub(crate) const DEPLOY: &str = "/apis/apps/v1/namespaces/apps/deployments/chat";
pub(crate) const SVC: &str = "/api/v1/namespaces/apps/services/chat";
pub(crate) const HPA: &str = "/apis/autoscaling/v2/namespaces/apps/horizontalpodautoscalers/chat";
pub(crate) const PDB: &str = "/apis/policy/v1/namespaces/apps/poddisruptionbudgets/chat";
pub(crate) const STATUS: &str =
    "/apis/chatgateway.io/v1beta1/namespaces/apps/chatgateways/chat/status";
pub(crate) const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/apps/events";
/// The uid of the `cgw` fixture.
pub(crate) const UID: &str = "0b7d1e3c-uid";

/// The ownership lookups every reconcile starts with, for a cluster serving `served`
/// (HPA and PDB paths of the current versions), everything absent.
pub(crate) fn lookups() -> Vec<Step> {
    [CM, COLLECTOR_CM, DEPLOY, SVC, HPA, PDB]
        .into_iter()
        .map(|p| not_found(Method::GET, p))
        .collect()
}

/// Metadata of a child this gateway owns.
pub(crate) fn owned_meta(name: &str) -> Value {
    json!({"name": name, "namespace": "apps", "uid": format!("{name}-child-uid"),
           "ownerReferences": [{"apiVersion": "chatgateway.io/v1beta1", "kind": "ChatGateway",
                                "name": "chat", "uid": UID, "controller": true}]})
}

/// A lookup that finds a child this gateway owns.
pub(crate) fn owned(path: &str, name: &str) -> Step {
    ok_with(
        Method::GET,
        path,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": owned_meta(name)}),
    )
}

/// An HS256 secret the gateway accepts (32 bytes).
pub(crate) const JWT_KEY: &str = "0123456789abcdef0123456789abcdef";
/// A key set with one key.
pub(crate) const JWKS: &str = r#"{"keys": [{"kty": "oct", "kid": "k1", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;

pub(crate) fn secret(name: &str, key: &str, value: &str) -> Value {
    use k8s_openapi::ByteString;
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "apps"},
           "data": {key: ByteString(value.as_bytes().to_vec())}})
}

/// A successful read of Secret `name` holding `key: value`.
pub(crate) fn secret_read(name: &str, key: &str, value: &str) -> Step {
    ok_with(
        Method::GET,
        &format!("{NS}/secrets/{name}"),
        secret(name, key, value),
    )
}

pub(crate) fn condition<'a>(status_patch: &'a Value, type_: &str) -> (&'a str, &'a str) {
    let c = status_patch["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status_patch}"));
    (
        c["status"].as_str().unwrap_or(""),
        c["reason"].as_str().unwrap_or(""),
    )
}

pub(crate) fn message<'a>(status_patch: &'a Value, type_: &str) -> &'a str {
    status_patch["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
}

pub(crate) fn paths(seen: &[(String, Value)]) -> Vec<&str> {
    seen.iter().map(|(p, _)| p.as_str()).collect()
}

/// Server-side applies of these paths, in this order (the operator's field manager,
/// forced): the usual tail of a reconcile.
pub(crate) fn applies(paths: &[&str]) -> Vec<Step> {
    paths.iter().map(|p| step(Method::PATCH, p)).collect()
}

pub(crate) fn with(mut steps: Vec<Step>, rest: Vec<Step>) -> Vec<Step> {
    steps.extend(rest);
    steps
}

#[tokio::test]
async fn create_applies_children_and_writes_status() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        with(
            lookups(),
            vec![
                step(Method::PATCH, CM),
                step(Method::PATCH, DEPLOY),
                step(Method::PATCH, SVC),
                step(Method::PATCH, PDB),
                step(Method::POST, EVENTS),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let action = reconcile(Arc::new(cgw(MINIMAL)), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(RESYNC));
    let seen = server.await.expect("server");
    let deployment = &seen[7].1;
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "ChatGateway"
    );
    assert_eq!(deployment["spec"]["replicas"], 1, "memory engine: one pod");
    let event = &seen[10].1;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Normal"), Some("Created"))
    );
    let status = &seen[11].1;
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(
        status["status"]["selector"],
        "app.kubernetes.io/instance=chat,app.kubernetes.io/name=chat-gateway"
    );
    // Nothing runs the pods in this fake: not ready, rolling out, applied, not degraded.
    assert_eq!(condition(status, "Ready"), ("False", "PodsNotReady"));
    assert_eq!(condition(status, "Available"), ("False", "NoPodsAvailable"));
    assert_eq!(condition(status, "Progressing"), ("True", "RollingOut"));
    assert_eq!(
        condition(status, "Reconciled"),
        ("True", "ReconcileSucceeded")
    );
    assert_eq!(condition(status, "Degraded"), ("False", "AsExpected"));
    assert!(ctx
        .metrics
        .render()
        .contains("chatgateway_operator_reconciles_total{outcome=\"ok\"} 1"));
}

#[tokio::test]
async fn disabled_pdb_is_deleted_only_as_the_object_it_owns() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let mut steps = lookups();
    steps[5] = owned(PDB, "chat");
    let server = serve(
        handle,
        with(
            steps,
            vec![
                step(Method::PATCH, CM),
                step(Method::PATCH, DEPLOY),
                step(Method::PATCH, SVC),
                deleted(PDB),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let c = cgw("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndisruptionBudget: {enabled: false}");
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    assert_eq!(
        seen[9].1["preconditions"]["uid"], "chat-child-uid",
        "a child recreated by someone else in the meantime is not deleted"
    );
}

#[tokio::test]
async fn failed_apply_is_degraded_and_stops_the_reconcile() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        with(
            lookups(),
            vec![
                step(Method::PATCH, CM),
                server_error(Method::PATCH, DEPLOY),
                step(Method::POST, EVENTS),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let err = reconcile(Arc::new(cgw(MINIMAL)), ctx.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Kube(_)), "{err}");
    let seen = server.await.expect("server");
    assert_eq!(condition(&seen[9].1, "Degraded"), ("True", "ApiError"));
    assert_eq!(condition(&seen[9].1, "Reconciled"), ("False", "ApiError"));
    assert!(ctx
        .metrics
        .render()
        .contains("chatgateway_operator_reconciles_total{outcome=\"error\"} 1"));
}

#[tokio::test]
async fn a_spec_that_cannot_work_touches_no_child() {
    for (spec, want) in [
        ("{}", "spec.gateway.auth is required"),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nreplicas: 3",
            "needs gateway.redis",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nsidecars: [{name: gateway, image: x}]",
            "sidecars[0].name",
        ),
    ] {
        let (ctx, handle) = context(ServedKinds::ALL, true);
        let server = serve(
            handle,
            vec![step(Method::POST, EVENTS), step(Method::PATCH, STATUS)],
        );
        let err = reconcile(Arc::new(cgw(spec)), ctx).await.unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        let seen = server.await.expect("server");
        assert_eq!(condition(&seen[1].1, "Degraded"), ("True", "InvalidSpec"));
        assert!(message(&seen[1].1, "Degraded").contains(want), "{spec}");
    }
}

#[tokio::test]
async fn ready_when_the_deployment_reports_every_pod_ready() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    // The apply answers with the live Deployment, status included.
    let live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": "apps", "generation": 4},
        "spec": {"replicas": 1, "selector": {}, "template": {}},
        "status": {"observedGeneration": 4, "replicas": 1, "readyReplicas": 1,
                   "availableReplicas": 1, "updatedReplicas": 1}});
    let server = serve(
        handle,
        with(
            lookups(),
            vec![
                step(Method::PATCH, CM),
                ok_with(Method::PATCH, DEPLOY, live),
                step(Method::PATCH, SVC),
                // Rolled out: the older configs' ConfigMaps go (none here).
                ok_with(
                    Method::GET,
                    "/api/v1/namespaces/apps/configmaps",
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
                ),
                step(Method::PATCH, PDB),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    reconcile(Arc::new(cgw(MINIMAL)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    let status = &seen[11].1;
    assert_eq!(condition(status, "Ready"), ("True", "AllPodsReady"));
    assert_eq!(condition(status, "Available"), ("True", "PodsAvailable"));
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
        (Some(1), Some(1))
    );
}

const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/apps/networkpolicies/chat";

/// A MINIMAL gateway's requests with a networkPolicy section: the policy's lookup after
/// the others, `policy` after the Service.
fn with_network_policy(lookup: Step, policy: Step) -> Vec<Step> {
    let mut steps = lookups();
    steps.push(lookup);
    steps.extend([
        step(Method::PATCH, CM),
        step(Method::PATCH, DEPLOY),
        step(Method::PATCH, SVC),
        policy,
        step(Method::PATCH, PDB),
        step(Method::PATCH, STATUS),
    ]);
    steps
}

#[tokio::test]
async fn network_policy_is_applied_when_set_and_deleted_when_turned_off() {
    let spec = format!("{MINIMAL}\nnetworkPolicy: {{egress: []}}");
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        with_network_policy(not_found(Method::GET, NETPOL), step(Method::PATCH, NETPOL)),
    );
    reconcile(Arc::new(cgw(&spec)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    let policy = &seen[10].1;
    assert_eq!(policy["kind"], "NetworkPolicy");
    assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(
        policy["metadata"]["ownerReferences"][0]["kind"],
        "ChatGateway"
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));

    let spec = format!("{MINIMAL}\nnetworkPolicy: {{enabled: false}}");
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        with_network_policy(owned(NETPOL, "chat"), step(Method::DELETE, NETPOL)),
    );
    reconcile(Arc::new(cgw(&spec)), ctx)
        .await
        .expect("reconcile");
    server.await.expect("server");
}
