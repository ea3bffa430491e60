//! The server API's Service `<name>-api`: looked up only when `gateway.api` is present,
//! applied beside the public Service, deleted (only when owned) when the API is turned off,
//! never written over someone else's object; its keys Secret read but not hashed.

use super::*;
use crate::builders::testing::BACKEND;

const API_SVC: &str = "/api/v1/namespaces/apps/services/chat-api";
const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/apps/networkpolicies/chat";

/// The keys Secret read, then the lookups of a gateway with `gateway.api` (and, for
/// BACKEND, a networkPolicy section): the policy's, then the API Service's.
fn reads(keys: &str, netpol: bool, api_service: Step) -> Vec<Step> {
    let mut steps = Vec::new();
    if !keys.is_empty() {
        steps.push(secret_read("chat-api", "keys", keys));
    }
    steps.extend(lookups());
    if netpol {
        steps.push(not_found(Method::GET, NETPOL));
    }
    steps.push(api_service);
    steps
}

#[tokio::test]
async fn the_api_gets_its_own_service_after_the_public_one() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let steps = with(
        reads("key-1\n", true, not_found(Method::GET, API_SVC)),
        applies(&[CM, DEPLOY, SVC, API_SVC, NETPOL, PDB, STATUS]),
    );
    let server = serve(handle, steps);
    reconcile(Arc::new(cgw(BACKEND)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    let body = |path: &str| {
        seen.iter()
            .find(|(p, _)| p == &format!("PATCH {path}"))
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no PATCH {path}"))
    };
    let api = body(API_SVC);
    assert_eq!(api["kind"], "Service");
    assert_eq!(api["metadata"]["name"], "chat-api");
    assert_eq!(api["metadata"]["ownerReferences"][0]["uid"], UID);
    assert_eq!(api["spec"]["type"], "ClusterIP");
    assert_eq!(
        api["spec"]["ports"],
        json!([{"name": "api", "port": 9443, "targetPort": "api", "protocol": "TCP"}])
    );
    let public = body(SVC);
    assert_eq!(public["spec"]["ports"].as_array().map(Vec::len), Some(1));
    assert_eq!(public["spec"]["ports"][0]["name"], "http");
    // The pods serve the port; the keys rotate in place, so they change no hash.
    let template = &body(DEPLOY)["spec"]["template"];
    let ports = &template["spec"]["containers"][0]["ports"];
    assert_eq!(
        ports[1],
        json!({"name": "api", "containerPort": 9443, "protocol": "TCP"})
    );
    assert!(
        template["metadata"]["annotations"]
            .get("chatgateway.io/secret-hash")
            .is_none(),
        "{template}"
    );
    let policy = body(NETPOL);
    assert_eq!(policy["spec"]["ingress"][1]["ports"][0]["port"], "api");
}

#[tokio::test]
async fn turning_the_api_off_deletes_the_service_it_owns() {
    let off = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {enabled: false, keysSecretRef: {name: chat-api, key: keys}}}";
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let steps = with(
        reads("", false, owned(API_SVC, "chat-api")),
        vec![
            step(Method::PATCH, CM),
            step(Method::PATCH, DEPLOY),
            step(Method::PATCH, SVC),
            deleted(API_SVC),
            step(Method::POST, EVENTS),
            step(Method::PATCH, PDB),
            step(Method::POST, EVENTS),
            step(Method::PATCH, STATUS),
        ],
    );
    let server = serve(handle, steps);
    reconcile(Arc::new(cgw(off)), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    assert_eq!(seen[10].1["preconditions"]["uid"], "chat-api-child-uid");
    assert_eq!(seen[11].1["reason"], "Deleted");
    assert!(
        seen[11].1["note"]
            .as_str()
            .is_some_and(|n| n.contains("Service chat-api")),
        "{}",
        seen[11].1
    );
    // Nothing serves the port any more.
    let ports = &seen[8].1["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert_eq!(ports.as_array().map(Vec::len), Some(1), "{ports}");
}

#[tokio::test]
async fn someones_service_named_like_the_api_stops_the_reconcile() {
    let spec = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {keysSecretRef: {name: chat-api, key: keys}}}";
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let foreign = ok_with(
        Method::GET,
        API_SVC,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": "chat-api", "namespace": "apps", "uid": "theirs"}}),
    );
    let steps = with(
        reads("k\n", false, foreign),
        vec![step(Method::POST, EVENTS), step(Method::PATCH, STATUS)],
    );
    let server = serve(handle, steps);
    let err = reconcile(Arc::new(cgw(spec)), ctx).await.unwrap_err();
    assert_eq!(err.reason(), "NotOwned");
    let seen = server.await.expect("server");
    assert!(
        paths(&seen)
            .iter()
            .all(|p| !p.starts_with("PATCH /api/v1/namespaces/apps/services")),
        "nothing written: {:?}",
        paths(&seen)
    );
    assert!(
        message(&seen[9].1, "Degraded").contains("Service apps/chat-api"),
        "{}",
        seen[9].1
    );
}

#[tokio::test]
async fn a_keys_secret_without_a_key_is_reported_not_applied() {
    let spec = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {keysSecretRef: {name: chat-api, key: keys}}}";
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        vec![
            secret_read("chat-api", "keys", "# none yet\n"),
            step(Method::PATCH, STATUS),
        ],
    );
    let err = reconcile(Arc::new(cgw(spec)), ctx).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidSecret");
    let seen = server.await.expect("server");
    assert_eq!(condition(&seen[1].1, "Degraded"), ("True", "InvalidSecret"));
    let said = message(&seen[1].1, "Degraded");
    assert!(
        said.contains(r#"secret "chat-api" key "keys""#) && said.contains("no API key"),
        "{said}"
    );
}

#[tokio::test]
async fn a_name_too_long_for_the_api_service_touches_no_child() {
    // 60 characters: a valid Service name alone, but `<name>-api` would have 64.
    let name = "a".repeat(60);
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let status = format!("/apis/chatgateway.io/v1beta1/namespaces/apps/chatgateways/{name}/status");
    let server = serve(
        handle,
        vec![step(Method::POST, EVENTS), step(Method::PATCH, &status)],
    );
    let mut c = cgw(BACKEND);
    c.metadata.name = Some(name.clone());
    let err = reconcile(Arc::new(c), ctx).await.expect_err("refused");
    assert_eq!(err.reason(), "InvalidSpec");
    let seen = server.await.expect("server");
    assert_eq!(condition(&seen[1].1, "Degraded"), ("True", "InvalidSpec"));
    assert!(
        message(&seen[1].1, "Degraded").contains(&format!("{name}-api")),
        "{}",
        seen[1].1
    );
}
