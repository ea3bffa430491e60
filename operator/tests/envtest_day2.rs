//! Day two against a real kube-apiserver v1.20.2 (see `support`): both CRD versions, what
//! that server enforces of the schema (required fields, defaults; not CEL, which the
//! operator checks itself), the replicas hand-off to an HPA through server-side-apply
//! field ownership, an object the gateway does not own, and a Secret rotation reaching
//! the pod template through the Secret watch.

mod support;

use chat_gateway_operator::crd::{ChatGateway, ConnectionsStatus};
use chat_gateway_operator::custom_metrics::report;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

const NS: &str = "day2";
const LONG: Duration = Duration::from_secs(60);

fn replicas_owners(d: &Deployment) -> Vec<String> {
    chat_gateway_operator::handoff::replicas_owners(d)
}

/// A key set with one HS256 key of id `kid`.
fn jwks(kid: &str) -> String {
    json!({"keys": [{"kty": "oct", "kid": kid, "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]})
        .to_string()
}

async fn create_secret(client: &kube::Client, name: &str, key: &str, value: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name}, "stringData": {key: value}
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_two_against_a_real_apiserver() {
    let started = Instant::now();
    let env = Envtest::start();
    let client = env.client().await;

    // v1.20 knows no x-kubernetes-validations: a server-side apply of the CRD is refused
    // (docs/operator.md says to create it, e.g. `kubectl apply --validate=false`).
    let crd_text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/chatgateway.yaml"),
    )
    .expect("crds/chatgateway.yaml");
    let crd: serde_json::Value =
        chat_gateway_operator::yaml::from_str(&crd_text).expect("crd yaml");
    let refused = Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            "chatgateways.chatgateway.io",
            &PatchParams::apply("envtest"),
            &Patch::Apply(&crd),
        )
        .await
        .expect_err("v1.20 refuses the CRD's CEL rules in a server-side apply");
    eprintln!("server-side apply of the CRD on v1.20: {refused}");
    assert!(
        refused.to_string().contains("x-kubernetes-validations"),
        "{refused}"
    );
    install_crd(&client).await;
    create_namespace(&client, NS).await;
    let cgws = Api::<ChatGateway>::namespaced(client.clone(), NS);

    // --- What v1.20 enforces itself: required fields (structural schema).
    for (spec, field) in [
        (json!({}), "spec.gateway"),
        (json!({"gateway": {}}), "spec.gateway.auth"),
    ] {
        let err = cgws
            .create(&PostParams::default(), &gateway("nothing", spec))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(field), "{err}");
    }
    // Both versions are served; the old spelling is kept and the schema defaults applied.
    let old_api = versioned_api(&client, NS, "chatgateway.io/v1alpha1", "ChatGateway");
    let old: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "chatgateway.io/v1alpha1", "kind": "ChatGateway",
        "metadata": {"name": "old"},
        "spec": {"gateway": {"auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": true}, "heartbeatInterval": "10s"}, "drain": {}},
    }))
    .expect("old");
    old_api
        .create(&PostParams::default(), &old)
        .await
        .expect("v1alpha1 is served");
    let read = cgws.get("old").await.expect("read as v1beta1");
    let gw = read.spec.gateway.clone().expect("gateway");
    assert_eq!(gw.heartbeat_interval.as_deref(), Some("10s"));
    let drain = read.spec.drain.clone().expect("drain");
    assert_eq!(
        (drain.timeout.as_deref(), drain.accept_grace.as_deref()),
        (Some("60s"), Some("5s")),
        "schema defaults applied by the API server"
    );

    // --- A spec only CEL refuses: v1.20 stores it, the operator refuses it.
    cgws.create(
        &PostParams::default(),
        &gateway(
            "split",
            json!({"replicas": 3, "gateway": {"auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": true}}}),
        ),
    )
    .await
    .expect("v1.20 does not evaluate CEL");

    // --- Someone else's Service named like a gateway.
    let theirs: Service = serde_json::from_value(json!({
        "metadata": {"name": "taken", "labels": {"team": "other"}},
        "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 1234}]},
    }))
    .expect("service");
    let services = Api::<Service>::namespaced(client.clone(), NS);
    services
        .create(&PostParams::default(), &theirs)
        .await
        .expect("service");
    cgws.create(
        &PostParams::default(),
        &gateway("taken", json!({"gateway": {"auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": true}}})),
    )
    .await
    .expect("taken");

    // --- An autoscaled gateway, and one whose JWT key will rotate.
    create_secret(&client, "redis", "url", "redis://redis:6379").await;
    create_secret(
        &client,
        "jwt",
        "secret",
        "first-key-0123456789abcdef-0123456",
    )
    .await;
    create_secret(&client, "jwks", "jwks.json", &jwks("k1")).await;
    let redis = json!({"urlSecretRef": {"name": "redis", "key": "url"}});
    cgws.create(
        &PostParams::default(),
        &gateway(
            "scaled",
            json!({"gateway": {"auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": true}, "redis": redis},
                   "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 10}}),
        ),
    )
    .await
    .expect("scaled");
    cgws.create(
        &PostParams::default(),
        &gateway(
            "rotating",
            json!({"gateway": {"auth": {"jwt": {"secretRef": {"name": "jwt", "key": "secret"},
                                                "jwksSecretRef": {"name": "jwks", "key": "jwks.json"},
                                                "audience": "chat"}}}}),
        ),
    )
    .await
    .expect("rotating");

    let metrics_port = e2e::process::free_port();
    let mut operator = Operator::start(&env, "day2", metrics_port);
    let reconciled = |name: &'static str, generation: i64| {
        let cgws = cgws.clone();
        move || {
            let cgws = cgws.clone();
            async move {
                let c = cgws.get(name).await.ok()?;
                (c.status.as_ref()?.observed_generation == Some(generation)).then_some(c)
            }
        }
    };

    let old = eventually("old reconciled", LONG, reconciled("old", 1)).await;
    assert_eq!(
        condition(&old, "Reconciled").map(|c| c.0).as_deref(),
        Some("True")
    );
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), NS);
    let text = mounted_config(&client, NS, "old")
        .await
        .data
        .and_then(|d| d.get("config.yaml").cloned())
        .unwrap_or_default();
    let config = chat_gateway_config::Config::from_yaml(&text).expect("config");
    assert_eq!(config.heartbeat.interval, Duration::from_secs(10));

    let split = eventually("split refused", LONG, reconciled("split", 1)).await;
    let (status, reason, message) = condition(&split, "Degraded").expect("Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(message.contains("needs gateway.redis"), "{message}");
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    assert!(deployments.get_opt("split").await.expect("get").is_none());

    let taken = eventually("taken refused", LONG, reconciled("taken", 1)).await;
    let (_, reason, message) = condition(&taken, "Degraded").expect("Degraded");
    assert_eq!(reason, "NotOwned", "{message}");
    assert!(
        message.contains(&format!("Service {NS}/taken")),
        "{message}"
    );
    let svc = services.get("taken").await.expect("their Service");
    assert_eq!(svc.metadata.owner_references, None);
    assert_eq!(
        svc.spec.and_then(|s| s.selector),
        Some([("app".to_string(), "theirs".to_string())].into())
    );
    assert!(
        !svc.metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some("chatgateway-operator")),
        "the operator wrote to someone else's Service"
    );
    // Nothing written: not even the config's ConfigMap (named by its content).
    let theirs = ListParams::default().labels("app.kubernetes.io/instance=taken");
    let written = config_maps.list(&theirs).await.expect("list");
    assert!(written.items.is_empty(), "{:?}", written.items);
    let events = Api::<Event>::namespaced(client.clone(), NS);
    eventually("NotOwned Warning Event", LONG, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("taken")
                    && e.reason.as_deref() == Some("NotOwned")
                    && e.type_.as_deref() == Some("Warning")
            })
        }
    })
    .await;

    // --- The replicas hand-off: the operator creates at minReplicas and hands the field
    // to a second manager; an HPA write through the scale subresource is never undone.
    eventually("scaled reconciled", LONG, reconciled("scaled", 1)).await;
    let dep = deployments.get("scaled").await.expect("Deployment");
    assert_eq!(dep.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let owners = replicas_owners(&dep);
    assert!(
        owners.iter().any(|m| m == "chatgateway-operator-handover"),
        "{owners:?}"
    );
    // What the HPA controller does: an update through /scale.
    deployments
        .patch_scale(
            "scaled",
            &PatchParams {
                field_manager: Some("kube-controller-manager".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scale like the HPA");
    // A spec change makes the operator apply the Deployment again.
    cgws.patch(
        "scaled",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"podAnnotations": {"touched": "1"}}})),
    )
    .await
    .expect("touch");
    eventually("scaled generation 2", LONG, reconciled("scaled", 2)).await;
    let dep = deployments.get("scaled").await.expect("Deployment");
    assert_eq!(
        dep.spec.as_ref().and_then(|s| s.replicas),
        Some(5),
        "the operator undid the HPA's scale: {:?}",
        replicas_owners(&dep)
    );
    assert!(!replicas_owners(&dep).contains(&"chatgateway-operator".to_string()));
    // Autoscaling off without `replicas`: the 5 pods stay, the HPA goes.
    cgws.patch(
        "scaled",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaling": {"enabled": false}}})),
    )
    .await
    .expect("autoscaling off");
    eventually("scaled generation 3", LONG, reconciled("scaled", 3)).await;
    let dep = deployments.get("scaled").await.expect("Deployment");
    assert_eq!(dep.spec.as_ref().and_then(|s| s.replicas), Some(5));
    let hpas = versioned_api(
        &client,
        NS,
        "autoscaling/v2beta2",
        "HorizontalPodAutoscaler",
    );
    assert!(hpas.get_opt("scaled").await.expect("get").is_none());
    eprintln!("hand-off done after {:?}", started.elapsed());

    // --- Secret rotation: the new key's hash reaches the pod template through the Secret
    // watch (the periodic resync is 5 minutes away).
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("chatgateway.io/secret-hash").cloned())
    };
    eventually("rotating reconciled", LONG, reconciled("rotating", 1)).await;
    let first = hash(&deployments.get("rotating").await.expect("Deployment")).expect("hash");
    let template = |d: &Deployment| {
        d.metadata
            .annotations
            .as_ref()?
            .get("chatgateway.io/template-hash")
            .cloned()
    };
    let first_template = template(&deployments.get("rotating").await.expect("Deployment"));
    // The key set is watched and checked, but rotates in place: a bad one is reported (the
    // pods keep the keys they have), a good one clears it, and neither touches the pods.
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let set_jwks = |value: String| {
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(
                    "jwks",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"stringData": {"jwks.json": value}})),
                )
                .await
                .expect("patch the key set")
        }
    };
    let degraded = |want: &'static str| {
        let cgws = cgws.clone();
        move || {
            let cgws = cgws.clone();
            async move {
                let c = cgws.get("rotating").await.ok()?;
                (condition(&c, "Degraded")?.1 == want).then_some(c)
            }
        }
    };
    set_jwks(r#"{"keys": [{"kty": "oct"}]}"#.into()).await;
    let bad = eventually("a bad key set is reported", LONG, degraded("InvalidSecret")).await;
    let message = condition(&bad, "Degraded").map(|c| c.2).unwrap_or_default();
    assert!(message.contains("keys[0] has no `kid`"), "{message}");
    set_jwks(jwks("k2")).await;
    eventually("a good key set clears it", LONG, degraded("AsExpected")).await;
    let now = deployments.get("rotating").await.expect("Deployment");
    assert_eq!(
        hash(&now).as_deref(),
        Some(first.as_str()),
        "a key set never rolls the pods"
    );
    assert_eq!(template(&now), first_template);
    secrets
        .patch(
            "jwt",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"secret": "second-key-0123456789abcdef-012345"}})),
        )
        .await
        .expect("rotate");
    let rotated = Instant::now();
    let second = eventually("the rotated key rolls the pods", LONG, || {
        let deployments = deployments.clone();
        let first = first.clone();
        async move {
            let h = hash(&deployments.get("rotating").await.ok()?)?;
            (h != first).then_some(h)
        }
    })
    .await;
    eprintln!(
        "rotation reached the template after {:?}",
        rotated.elapsed()
    );
    assert_ne!(first, second);
    eventually("a Normal RollingUpdate Event", LONG, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("rotating")
                    && e.reason.as_deref() == Some("RollingUpdate")
                    && e.type_.as_deref() == Some("Normal")
            })
        }
    })
    .await;

    // --- status.connections moving with every scrape round starts no reconcile: the
    // reporter's writes are the operator's own, and each reconcile re-applies every child.
    let before = reconciles_ok(metrics_port);
    for total in 1..=6 {
        let connections = ConnectionsStatus {
            total,
            pods_read: 1,
            per_pod: Some(total),
            ..Default::default()
        };
        report::write(&client, NS, "old", &connections)
            .await
            .expect("status.connections");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = reconciles_ok(metrics_port);
    eprintln!("reconciles: {before} then {after} over six status.connections writes");
    assert!(
        after - before < 3.0,
        "status.connections writes started reconciles: {before} -> {after}"
    );
    // A spec change after them still does (the filter keys on the generation).
    cgws.patch(
        "old",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"gateway": {"heartbeatInterval": "12s"}}})),
    )
    .await
    .expect("spec change");
    eventually("old reconciled again", LONG, reconciled("old", 2)).await;

    // --- The Ready printer column, as `kubectl get cgw` shows it (server-side table).
    let request = http::Request::get(format!(
        "/apis/chatgateway.io/v1beta1/namespaces/{NS}/chatgateways/old"
    ))
    .header(
        "Accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .body(Vec::new())
    .expect("request");
    let table: serde_json::Value =
        serde_json::from_str(&client.request_text(request).await.expect("table")).expect("json");
    let columns: Vec<_> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        columns.get(1).map(String::as_str),
        Some("Ready"),
        "{columns:?}"
    );
    let ready = &table["rows"][0]["cells"][1];
    assert!(ready == "True" || ready == "False", "{table}");

    let status = operator.terminate();
    assert!(
        status.success(),
        "operator exit {status:?}:\n{}",
        operator.log()
    );
    eprintln!("day-two scenario finished after {:?}", started.elapsed());
}
