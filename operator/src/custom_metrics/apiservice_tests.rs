//! The leader's upkeep against a mocked API server: exact requests.

use super::*;
use crate::reconcile::tests::{not_found, ok_with, serve, step, Handle, Step};
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{json, Value};

const SECRETS: &str = "/api/v1/namespaces/ops/secrets";
const SECRET: &str = "/api/v1/namespaces/ops/secrets/cm-tls";
const V1B1: &str = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.custom.metrics.k8s.io";
const V1B2: &str = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta2.custom.metrics.k8s.io";

fn upkeep() -> (Upkeep, Handle, prometheus::IntGaugeVec) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("g", "test"),
        &["apiservice", "provider"],
    )
    .expect("gauge");
    let u = Upkeep::new(
        Client::new(service, "default"),
        "ops",
        "cm-tls",
        "cm",
        vec![
            "v1beta1.custom.metrics.k8s.io".into(),
            "v1beta2.custom.metrics.k8s.io".into(),
        ],
        Policy {
            ca_validity: Duration::from_secs(3000),
            cert_validity: Duration::from_secs(900),
            dns_names: Policy::service_names("cm", "ops"),
        },
        Providers::default(),
        gauge.clone(),
    );
    (u, handle, gauge)
}

fn apiservice(name: &str, service: (&str, &str), ca_bundle: Option<&str>) -> Value {
    let mut spec = json!({"group": "custom.metrics.k8s.io", "version": name.split('.').next(),
        "groupPriorityMinimum": 100, "versionPriority": 200,
        "service": {"namespace": service.0, "name": service.1, "port": 443}});
    if let Some(b) = ca_bundle {
        spec["caBundle"] = serde_json::to_value(ByteString(b.as_bytes().to_vec())).expect("b64");
    }
    json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
           "metadata": {"name": name}, "spec": spec})
}

/// The answer to a GET of one of the two APIServices.
fn found(path: &str, service: (&str, &str), ca_bundle: Option<&str>) -> Step {
    let name = if path == V1B1 {
        "v1beta1.custom.metrics.k8s.io"
    } else {
        "v1beta2.custom.metrics.k8s.io"
    };
    ok_with(Method::GET, path, apiservice(name, service, ca_bundle))
}

/// Material issued at `at`.
fn issued(u: &Upkeep, at: SystemTime) -> Material {
    certs::renew(None, &u.policy, at, true)
        .expect("issue")
        .expect("material")
        .material
}

fn secret_of(m: &Material) -> Value {
    let data: BTreeMap<String, ByteString> = m
        .to_data()
        .into_iter()
        .map(|(k, v)| (k, ByteString(v)))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": "cm-tls", "namespace": "ops", "resourceVersion": "5"},
           "data": data})
}

fn decoded(v: &Value) -> String {
    let b: ByteString = serde_json::from_value(v.clone()).expect("base64");
    String::from_utf8(b.0).expect("utf-8")
}

#[tokio::test]
async fn first_pass_creates_the_secret_and_publishes_its_ca() {
    let (u, handle, gauge) = upkeep();
    let server = serve(
        handle,
        vec![
            not_found(Method::GET, SECRET),
            found(V1B1, ("ops", "cm"), None),
            found(V1B2, ("ops", "cm"), None),
            // The APIServices trust the new CA before the Secret carries it.
            step(Method::PUT, V1B1),
            step(Method::PUT, V1B2),
            step(Method::POST, SECRETS),
        ],
    );
    assert!(!u.pass(SystemTime::now()).await.expect("pass"));
    let seen = server.await.expect("server");
    let created = &seen[5].1;
    assert_eq!(created["type"], "kubernetes.io/tls");
    assert_eq!(
        created["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "chatgateway-operator"
    );
    let bundle = decoded(&created["data"]["ca.crt"]);
    assert!(bundle.starts_with("-----BEGIN CERTIFICATE-----"));
    for patch in [&seen[3].1, &seen[4].1] {
        assert_eq!(decoded(&patch["spec"]["caBundle"]), bundle);
        // Only the caBundle changes; the rest of the chart's spec is kept as read.
        assert_eq!(patch["spec"]["service"]["name"], "cm");
        assert_eq!(patch["spec"]["versionPriority"], 200);
    }
    assert_eq!(
        u.providers.get()["v1beta2.custom.metrics.k8s.io"],
        Provider::Operator
    );
    assert_eq!(
        gauge
            .with_label_values(&["v1beta1.custom.metrics.k8s.io", "operator"])
            .get(),
        1
    );
}

#[tokio::test]
async fn a_current_secret_and_bundle_mean_no_writes() {
    let (u, handle, _) = upkeep();
    let m = issued(&u, SystemTime::now());
    let server = serve(
        handle,
        vec![
            ok_with(Method::GET, SECRET, secret_of(&m)),
            found(V1B1, ("ops", "cm"), Some(&m.bundle)),
            found(V1B2, ("ops", "cm"), Some(&m.bundle)),
        ],
    );
    assert!(!u.pass(SystemTime::now()).await.expect("pass"));
    assert_eq!(server.await.expect("server").len(), 3);
}

#[tokio::test]
async fn another_provider_is_left_alone() {
    let (u, handle, gauge) = upkeep();
    let m = issued(&u, SystemTime::now());
    let server = serve(
        handle,
        vec![
            ok_with(Method::GET, SECRET, secret_of(&m)),
            found(V1B1, ("monitoring", "prometheus-adapter"), Some("their CA")),
            not_found(Method::GET, V1B2),
        ],
    );
    assert!(!u.pass(SystemTime::now()).await.expect("pass"));
    assert_eq!(server.await.expect("server").len(), 3, "no patch of theirs");
    let providers = u.providers.get();
    assert_eq!(
        providers["v1beta1.custom.metrics.k8s.io"],
        Provider::Other("monitoring/prometheus-adapter".into())
    );
    assert_eq!(
        providers["v1beta2.custom.metrics.k8s.io"],
        Provider::Missing
    );
    assert_eq!(
        gauge
            .with_label_values(&["v1beta1.custom.metrics.k8s.io", "other"])
            .get(),
        1
    );
}

#[tokio::test]
async fn a_rotated_ca_is_published_and_the_secret_replaced_with_its_version() {
    let (u, handle, _) = upkeep();
    // Material made 2001 s ago: its 3000 s CA is due for rotation.
    let then = SystemTime::now() - Duration::from_secs(2001);
    let m = issued(&u, then);
    // Keep the serving certificate valid so only the CA rotates.
    let m = certs::renew(Some(&m), &u.policy, then + Duration::from_secs(1900), true)
        .expect("renew")
        .expect("leaf")
        .material;
    let server = serve(
        handle,
        vec![
            ok_with(Method::GET, SECRET, secret_of(&m)),
            found(V1B1, ("ops", "cm"), Some(&m.bundle)),
            not_found(Method::GET, V1B2),
            step(Method::PUT, V1B1),
            step(Method::PUT, SECRET),
        ],
    );
    assert!(u.pass(SystemTime::now()).await.expect("pass"), "rotated");
    let seen = server.await.expect("server");
    assert_eq!(seen[4].1["metadata"]["resourceVersion"], "5");
    let stored = decoded(&seen[4].1["data"]["ca.crt"]);
    assert_eq!(certs::parse_bundle(&stored).len(), 2, "new and old CA");
    assert_eq!(decoded(&seen[3].1["spec"]["caBundle"]), stored);
    assert_eq!(
        decoded(&seen[4].1["data"]["tls.crt"]),
        m.cert,
        "the serving certificate moves only after publication"
    );
}
