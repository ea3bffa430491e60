//! The custom metrics API against a real kube-apiserver (v1.20.2 + etcd, aggregation layer
//! on: `e2e/k8s/envtest.sh`). The operator binary serves `custom.metrics.k8s.io` through
//! real APIServices; the values come from real `chat-gateway` processes with real
//! WebSocket connections open on them.
//!
//! The envtest has no kubelet, scheduler or kube-proxy, so the test plays their parts:
//! - gateway pods are Pod objects whose status (phase Running, podIP 127.0.0.1) and `http`
//!   container port point at the gateway processes it started;
//! - the Service behind the APIServices has no selector; the test writes its Endpoints
//!   with a non-loopback address of this machine (the API server refuses loopback
//!   endpoints; `--enable-aggregator-routing` dials the endpoint directly), where the
//!   operator listens. Traffic stays on this machine.

#[path = "custom_metrics/direct.rs"]
mod direct;
mod support;

use chat_gateway_operator::crd::ChatGateway;
use chat_gateway_operator::deletion_cost::ANNOTATION;
use direct::{connect, direct, first_pem};
use e2e::process::GatewayProcess;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{eventually, Envtest, Operator};

const OPS: &str = "cm-system";
const APPS: &str = "apps";
const SERVICE: &str = "chatgateway-custom-metrics";
const SECRET: &str = "chatgateway-custom-metrics-tls";
const PODS_V1B1: &str =
    "/apis/custom.metrics.k8s.io/v1beta1/namespaces/apps/pods/*/chatgateway_connections";

/// A WebSocket client that stays connected like a real one (reading, so the gateway's
/// pings are answered); dropping it closes the connection.
struct Held(tokio::task::JoinHandle<()>);

impl Held {
    async fn connect(gateway: &GatewayProcess, user: &str) -> Held {
        let mut client = e2e::Client::connect(&gateway.ws_url(&format!("user={user}")))
            .await
            .expect("connect");
        Held(tokio::spawn(async move {
            while client.recv().await.is_some() {}
        }))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A non-loopback IPv4 address of this machine: Endpoints may not name loopback.
fn host_address() -> IpAddr {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .expect("run `ip` (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .next()
        .expect("this machine has no non-loopback IPv4 address for the Endpoints")
}

/// `kubectl get --raw PATH` through the API client: the aggregator proxies it.
async fn get_raw(client: &Client, path: &str) -> Result<Value, kube::Error> {
    let req = http::Request::get(path).body(Vec::new()).expect("request");
    let text = client.request_text(req).await?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Pod name -> value from a MetricValueList.
fn values(list: &Value) -> Vec<(String, String)> {
    let mut v: Vec<_> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["describedObject"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                i["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create")
}

/// A gateway pod as the kubelet would report it: running and ready at 127.0.0.1 on `port`.
async fn gateway_pod(client: &Client, name: &str, port: u16) {
    let pods = Api::<Pod>::namespaced(client.clone(), APPS);
    create(
        &pods,
        json!({"metadata": {"name": name, "labels": {
            "app.kubernetes.io/name": "chat-gateway", "app.kubernetes.io/instance": "chat"}},
        "spec": {"containers": [{"name": "gateway", "image": "chat-gateway:test",
            "ports": [{"name": "http", "containerPort": port}]}]}}),
    )
    .await;
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .expect("pod status");
}

async fn ca_bundle(apiservices: &Api<APIService>) -> String {
    let live = apiservices
        .get("v1beta2.custom.metrics.k8s.io")
        .await
        .expect("apiservice");
    live.spec
        .and_then(|s| s.ca_bundle)
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
        .unwrap_or_default()
}

fn available(a: &APIService) -> bool {
    a.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Available" && c.status == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_metric_from_real_gateways_through_the_aggregated_api() {
    let env = Envtest::start();
    let client = env.client().await;

    // The CRD, namespaces, and what the chart installs for the aggregated API.
    let crd: CustomResourceDefinition =
        chat_gateway_operator::yaml::from_str(&chat_gateway_operator::crd_yaml().expect("crd"))
            .expect("crd yaml");
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    for ns in [OPS, APPS] {
        create(
            &Api::<Namespace>::all(client.clone()),
            json!({"metadata": {"name": ns}}),
        )
        .await;
    }
    let host = host_address();
    let port = e2e::process::free_port_on(host);
    let operator_addr = SocketAddr::new(host, port);
    create(
        &Api::<Service>::namespaced(client.clone(), OPS),
        json!({"metadata": {"name": SERVICE},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}}),
    )
    .await;
    create(
        &Api::<Endpoints>::namespaced(client.clone(), OPS),
        json!({"metadata": {"name": SERVICE},
        "subsets": [{"addresses": [{"ip": host.to_string()}],
                     "ports": [{"name": "https", "port": port}]}]}),
    )
    .await;
    let apiservices = Api::<APIService>::all(client.clone());
    for (version, priority) in [("v1beta1", 100), ("v1beta2", 200)] {
        create(
            &apiservices,
            json!({"metadata": {"name": format!("{version}.custom.metrics.k8s.io")},
            "spec": {"group": "custom.metrics.k8s.io", "version": version,
                     "groupPriorityMinimum": 100, "versionPriority": priority,
                     "service": {"namespace": OPS, "name": SERVICE, "port": 443}}}),
        )
        .await;
    }

    // Two real gateways with real connections (3 and 5), and a pod nothing answers for.
    let insecure = [
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_ENGINE", "memory"),
    ];
    let gw_a = GatewayProcess::start(&insecure);
    let gw_b = GatewayProcess::start(&insecure);
    let mut clients_a = Vec::new();
    for i in 0..3 {
        clients_a.push(Held::connect(&gw_a, &format!("a{i}")).await);
    }
    let mut clients_b = Vec::new();
    for i in 0..5 {
        clients_b.push(Held::connect(&gw_b, &format!("b{i}")).await);
    }
    let dead_port = e2e::process::free_port();
    let cgws = Api::<ChatGateway>::namespaced(client.clone(), APPS);
    create(
        &cgws,
        json!({"apiVersion": "chatgateway.io/v1alpha1", "kind": "ChatGateway",
        "metadata": {"name": "chat", "labels": {"tier": "edge"}},
        "spec": {"gateway": {"auth": {"mode": "insecure"}}}}),
    )
    .await;
    gateway_pod(&client, "chat-a", gw_a.addr.port()).await;
    gateway_pod(&client, "chat-b", gw_b.addr.port()).await;
    gateway_pod(&client, "chat-dead", dead_port).await;

    let metrics_addr = format!("127.0.0.1:{}", e2e::process::free_port());
    let cm_addr = operator_addr.to_string();
    let mut op = Operator::start_with(
        &env,
        "op-0",
        &[
            "--lease-namespace",
            OPS,
            "--metrics-addr",
            &metrics_addr,
            "--custom-metrics-addr",
            &cm_addr,
            "--custom-metrics-service",
            SERVICE,
            "--custom-metrics-secret",
            SECRET,
            "--custom-metrics-scrape-interval",
            "1s",
            // Short lifetimes so the test sees a serving-certificate renewal and a CA rotation.
            "--custom-metrics-ca-validity",
            "90s",
            "--custom-metrics-cert-validity",
            "30s",
        ],
    );

    // The aggregator checks discovery through the Service with the caBundle the operator
    // wrote: Available.
    for name in [
        "v1beta1.custom.metrics.k8s.io",
        "v1beta2.custom.metrics.k8s.io",
    ] {
        eventually(
            &format!("{name} Available"),
            Duration::from_secs(60),
            || {
                let (apiservices, op_alive) = (apiservices.clone(), op.running());
                async move {
                    assert!(op_alive, "the operator exited");
                    apiservices.get(name).await.ok().filter(available)
                }
            },
        )
        .await;
    }

    // kubectl get --raw …/pods/*/chatgateway_connections: the real connection counts; the
    // pod nothing answers for is left out (not 0).
    let got = eventually("both gateways' counts", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let list = get_raw(&client, PODS_V1B1).await.ok()?;
            (values(&list) == pairs(&[("chat-a", "3"), ("chat-b", "5")])).then_some(list)
        }
    })
    .await;
    assert_eq!(got["apiVersion"], "custom.metrics.k8s.io/v1beta1");
    assert_eq!(got["items"][0]["metricName"], "chatgateway_connections");
    // v1beta2 with the selector an HPA sends for the Deployment.
    let v2 = get_raw(
        &client,
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/apps/pods/*/chatgateway_connections\
         ?labelSelector=app.kubernetes.io%2Finstance%3Dchat%2Capp.kubernetes.io%2Fname%3Dchat-gateway",
    )
    .await
    .expect("v1beta2 list");
    assert_eq!(values(&v2), pairs(&[("chat-a", "3"), ("chat-b", "5")]));
    assert_eq!(v2["items"][0]["metric"]["name"], "chatgateway_connections");
    let discovery = get_raw(&client, "/apis/custom.metrics.k8s.io/v1beta2")
        .await
        .expect("discovery");
    assert_eq!(
        discovery["resources"][0]["name"],
        "pods/chatgateway_connections"
    );

    // The object total is unknown while a running pod cannot be read …
    let object = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/apps/chatgateways.chatgateway.io/chat/chatgateway_connections";
    match get_raw(&client, object).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404, "{s:?}"),
        other => panic!("expected 404 while chat-dead is unread, got {other:?}"),
    }
    // … and the sum once it is gone.
    Api::<Pod>::namespaced(client.clone(), APPS)
        .delete("chat-dead", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    eventually("the object total", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            (values(&get_raw(&client, object).await.ok()?) == pairs(&[("chat", "8")])).then_some(())
        }
    })
    .await;

    // Fresh within seconds: two clients leave gateway b.
    clients_b.truncate(3);
    eventually("chat-b to drop to 3", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            (values(&get_raw(&client, PODS_V1B1).await.ok()?)
                == pairs(&[("chat-a", "3"), ("chat-b", "3")]))
            .then_some(())
        }
    })
    .await;
    // The ChatGateway's status shows what the operator sees.
    eventually("status.connections", Duration::from_secs(40), || {
        let cgws = cgws.clone();
        async move {
            let c = cgws.get("chat").await.ok()?.status?.connections?;
            (c.per_pod == Some(3) && c.total == 6 && c.pods_read == 2 && c.pods_unread == 0)
                .then_some(())
        }
    })
    .await;

    // Straight to the operator: no client certificate is 401; the API server's front-proxy
    // certificate speaking for a user without RBAC is 403 (a real SubjectAccessReview);
    // for a member of system:masters it is 200.
    let bundle = ca_bundle(&apiservices).await;
    let crt = std::fs::read_to_string(env.env("ENVTEST_FRONT_PROXY_CLIENT_CERT")).expect("cert");
    let key = std::fs::read_to_string(env.env("ENVTEST_FRONT_PROXY_CLIENT_KEY")).expect("key");
    let proxy = Some((crt.as_str(), key.as_str()));
    let masters = "system:masters";
    assert_eq!(
        direct(operator_addr, &bundle, None, "admin", masters).await,
        401
    );
    assert_eq!(
        direct(
            operator_addr,
            &bundle,
            proxy,
            "alice",
            "system:authenticated"
        )
        .await,
        403
    );
    assert_eq!(
        direct(operator_addr, &bundle, proxy, "admin", masters).await,
        200
    );

    // Rotation: with a 90 s CA the operator rotates it at 60 s. The new CA joins the
    // caBundle first; the serving certificate moves to it only after that, so the
    // aggregator keeps verifying what is served: queries keep answering throughout.
    let first_ca = first_pem(&bundle);
    let expected = pairs(&[("chat-a", "3"), ("chat-b", "3")]);
    let mut failures = Vec::new();
    let mut queries = 0;
    let started = Instant::now();
    let mut query = |list: Result<Value, kube::Error>| {
        queries += 1;
        match list {
            Ok(l) if values(&l) == expected => None,
            other => Some(format!("{:?}: {other:?}", started.elapsed())),
        }
    };
    let new_ca = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no CA rotation:\n{}",
            op.log()
        );
        failures.extend(query(get_raw(&client, PODS_V1B1).await));
        let live = ca_bundle(&apiservices).await;
        let first = first_pem(&live);
        if first != first_ca {
            assert!(
                live.contains(&first_ca),
                "the old CA left the caBundle at once"
            );
            break first;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the serving certificate never moved to the new CA:\n{}",
            op.log()
        );
        failures.extend(query(get_raw(&client, PODS_V1B1).await));
        if connect(operator_addr, &new_ca, None).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..5 {
        failures.extend(query(get_raw(&client, PODS_V1B1).await));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "{queries} queries through the aggregator around a CA rotation at {:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {queries} queries failed around the rotation: {failures:#?}\n{}",
        failures.len(),
        op.log()
    );
    let log = op.log();
    assert!(log.contains("CA rotated"), "{log}");

    // The leader's pod-deletion cost ranks the ready pods by the same readings (the
    // operator reads each pod once per interval for both). chat-b had 5 connections, then
    // 3: whichever the first pass (30 s after leading) saw stays, as a move of 2 is too
    // small to rewrite.
    let pods = Api::<Pod>::namespaced(client.clone(), APPS);
    let costs = eventually("pod-deletion costs", Duration::from_secs(45), || {
        let pods = pods.clone();
        async move {
            let cost = |p: Pod| p.annotations().get(ANNOTATION).cloned();
            let a = cost(pods.get("chat-a").await.ok()?)?;
            let b = cost(pods.get("chat-b").await.ok()?)?;
            Some((a, b))
        }
    })
    .await;
    assert_eq!(costs.0, "3", "{}", op.log());
    assert!(["3", "5"].contains(&costs.1.as_str()), "{costs:?}");

    drop(clients_a);
    drop(clients_b);
    drop((gw_a, gw_b));
}
