//! The whole request path over real TLS on loopback: the handshake, 401 without a
//! verified front-proxy certificate, 403 for a user the SubjectAccessReview denies
//! (mocked API server), 200 with the metric list for one it allows.

use super::*;
use crate::custom_metrics::authn::FrontProxy;
use crate::custom_metrics::certs::{self, Policy};
use crate::custom_metrics::scrape::{GatewaySample, PodSample, Snapshot};
use crate::custom_metrics::testing::{ca, client_cert, front_proxy_data, TestCert};
use crate::custom_metrics::tls::{server_config, ServingCert};
use crate::reconcile::tests::{ok_with, serve as mock_serve, Handle};
use http_body_util::{BodyExt, Empty};
use kube::client::Body;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;

const SAR: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
const PODS: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/apps/pods/*/chatgateway_connections";

struct Fixture {
    addr: SocketAddr,
    serving_ca: String,
    proxy_cert: TestCert,
    stranger_cert: TestCert,
    state: Arc<State>,
}

/// The server on a free port, and the mocked API server its SubjectAccessReviews go to.
async fn start() -> (Fixture, Handle) {
    start_with(Limits::default()).await
}

/// [`start`] with other limits.
async fn start_with(limits: Limits) -> (Fixture, Handle) {
    let material = certs::renew(
        None,
        &Policy {
            ca_validity: Duration::from_secs(3600),
            cert_validity: Duration::from_secs(1200),
            dns_names: Policy::service_names("cm", "ops"),
        },
        std::time::SystemTime::now(),
        true,
    )
    .expect("issue")
    .expect("material")
    .material;
    let serving = Arc::new(ServingCert::default());
    assert!(!serving.is_loaded());
    serving
        .set(&material.cert, &material.key)
        .expect("usable pair");
    assert!(serving.is_loaded());
    let proxy_ca = ca("front-proxy-ca");
    let proxy =
        FrontProxy::from_config_map(&front_proxy_data(&proxy_ca.pem, &["front-proxy-client"]))
            .expect("valid")
            .expect("configured");
    let (service, api) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    let values = Values::new(Duration::from_secs(60));
    values.set(Snapshot {
        pods: vec![PodSample {
            namespace: "apps".into(),
            name: "chat-1".into(),
            gateway: "chat".into(),
            labels: BTreeMap::new(),
            connections: Some(12),
            at: k8s_openapi::jiff::Timestamp::now(),
        }],
        gateways: vec![GatewaySample {
            namespace: "apps".into(),
            name: "chat".into(),
            labels: BTreeMap::new(),
        }],
        at: k8s_openapi::jiff::Timestamp::now(),
    });
    let state = Arc::new(State {
        front_proxy: FrontProxyConfig::fixed(Some(proxy)),
        authorizer: Authorizer::new(kube::Client::new(service, "default")),
        values,
        requests: prometheus::IntCounterVec::new(
            prometheus::Opts::new("requests", "test"),
            &["code"],
        )
        .expect("counter"),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tls = Arc::new(server_config(serving).expect("tls config"));
    tokio::spawn(serve_with(listener, tls, state.clone(), limits));
    let fixture = Fixture {
        addr,
        serving_ca: material.bundle,
        proxy_cert: client_cert(&proxy_ca, "front-proxy-client"),
        stranger_cert: client_cert(&ca("cluster-client-ca"), "front-proxy-client"),
        state,
    };
    (fixture, api)
}

/// A TLS connection, verifying the server as `cm.ops.svc` (what the aggregator checks).
async fn connect(
    f: &Fixture,
    cert: Option<&TestCert>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certs::parse_bundle(&f.serving_ca) {
        roots.add(der).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.der.clone()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(f.addr)
        .await
        .expect("connect");
    connector
        .connect(ServerName::try_from("cm.ops.svc").expect("name"), tcp)
        .await
        .expect("TLS handshake with the service name")
}

/// GET over TLS.
async fn get(f: &Fixture, cert: Option<&TestCert>, user: Option<&str>) -> (u16, Value) {
    get_on(connect(f, cert).await, user).await
}

/// GET on a connection made with [`connect`].
async fn get_on(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    user: Option<&str>,
) -> (u16, Value) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http");
    tokio::spawn(conn);
    let mut req = Request::get(PODS).header("host", "cm.ops.svc");
    if let Some(u) = user {
        req = req
            .header("X-Remote-User", u)
            .header("X-Remote-Group", "system:authenticated");
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).expect("json body"))
}

fn review(allowed: bool) -> Value {
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
           "spec": {}, "status": {"allowed": allowed, "reason": if allowed { "" } else { "RBAC: no rule" }}})
}

#[tokio::test]
async fn unauthenticated_forbidden_and_allowed_over_tls() {
    let (f, api) = start().await;
    // No client certificate: the handshake completes, the request is 401.
    let (status, body) = get(&f, None, Some("admin")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["reason"], "Unauthorized");
    // A certificate from another CA (a user's own client certificate) is not the proxy.
    let (status, body) = get(&f, Some(&f.stranger_cert), Some("admin")).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("request-header CA")),
        "{body}"
    );
    // The proxy certificate without a user header.
    let (status, _) = get(&f, Some(&f.proxy_cert), None).await;
    assert_eq!(status, 401);

    // The proxy speaking for alice, whom the SubjectAccessReview denies; then for the HPA.
    let sar = mock_serve(
        api,
        vec![
            ok_with(http::Method::POST, SAR, review(false)),
            ok_with(http::Method::POST, SAR, review(true)),
        ],
    );
    let (status, body) = get(&f, Some(&f.proxy_cert), Some("alice")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "Forbidden");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"alice\"") && message.contains("pods/chatgateway_connections"),
        "{message}"
    );
    let (status, body) = get(
        &f,
        Some(&f.proxy_cert),
        Some("system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["describedObject"]["name"], "chat-1");
    assert_eq!(body["items"][0]["value"], "12");
    let reviews = sar.await.expect("mock");
    assert_eq!(reviews[0].1["spec"]["user"], "alice");
    assert_eq!(
        reviews[0].1["spec"]["resourceAttributes"]["subresource"],
        "chatgateway_connections"
    );
    let counted = |code: &str| f.state.requests.with_label_values(&[code]).get();
    assert_eq!((counted("401"), counted("403"), counted("200")), (3, 1, 1));
}

/// Reads until the server closes the connection (EOF, or a reset); `false` when it is
/// still open after `within`.
async fn closed_within(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
    .is_ok()
}

/// A client without a certificate that never finishes its request's head is cut off at
/// the header timeout; so is a kept-alive connection that sends nothing more.
#[tokio::test]
async fn an_unfinished_head_and_an_idle_connection_are_closed() {
    use tokio::io::AsyncWriteExt;
    let header_read_timeout = Duration::from_secs(1);
    let (f, _api) = start_with(Limits {
        header_read_timeout,
        ..Limits::default()
    })
    .await;
    let margin = Duration::from_secs(30);
    let mut tls = connect(&f, None).await;
    tls.write_all(b"GET /apis/custom.metrics.k8s.io/v1beta1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    tls.flush().await.expect("flush");
    assert!(
        closed_within(&mut tls, header_read_timeout + margin).await,
        "a connection with an unfinished head is still open"
    );

    let mut tls = connect(&f, None).await;
    tls.write_all(b"GET /apis/custom.metrics.k8s.io/v1beta1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tls.flush().await.expect("flush");
    // The 401, then nothing: closed as idle.
    assert!(
        closed_within(&mut tls, header_read_timeout + margin).await,
        "an idle connection is still open"
    );
}

/// Over the connection bound a new connection waits (not even its TLS handshake is
/// answered) and is served once a connection ends; one below the bound is served.
#[tokio::test]
async fn connections_over_the_bound_wait_for_a_slot() {
    let (f, _api) = start_with(Limits {
        max_connections: 2,
        // Idle connections hold their slots for the whole test.
        header_read_timeout: Duration::from_secs(600),
        ..Limits::default()
    })
    .await;
    let f = Arc::new(f);
    let first = connect(&f, None).await;
    // Below the bound: served (401: no client certificate). The connection ends with
    // the exchange, and a new one gets its slot once the server has seen it go.
    let (status, _) = get(&f, None, Some("admin")).await;
    assert_eq!(status, 401);
    let second = connect(&f, None).await;
    let waiting = tokio::spawn({
        let f = f.clone();
        async move { get(&f, None, Some("admin")).await.0 }
    });
    // How fast it would be served is not the point: it must not be, while both slots
    // are held.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a connection over the bound was served"
    );
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("served once a slot is free")
        .expect("task");
    assert_eq!(status, 401);
    drop(second);
}

/// Past its share of the connections an address's new connection is closed at once;
/// one of its connections ending makes room again.
#[tokio::test]
async fn an_address_past_its_share_is_closed_at_once() {
    use tokio::io::AsyncReadExt;
    let (f, _api) = start_with(Limits {
        max_connections_per_ip: 2,
        // Unfinished handshakes hold their connections for the whole test.
        handshake_timeout: Duration::from_secs(600),
        ..Limits::default()
    })
    .await;
    let tcp = || tokio::net::TcpStream::connect(f.addr);
    let first = tcp().await.expect("connect");
    let _second = tcp().await.expect("connect");
    let mut third = tcp().await.expect("connect");
    let mut byte = [0; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), third.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the third connection of one address is still open: {read:?}"
    );
    drop(first);
    // Once the server has seen the first go, a new connection is kept (waiting for its
    // handshake) instead of closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut next = tcp().await.expect("connect");
        let read = tokio::time::timeout(Duration::from_millis(300), next.read(&mut byte)).await;
        if read.is_err() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never kept again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A head longer than the bound is refused (431) and the connection closed, before the
/// server has buffered more of it.
#[tokio::test]
async fn a_head_over_the_bound_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (f, _api) = start().await;
    let mut tls = connect(&f, None).await;
    let long = format!(
        "GET /apis/custom.metrics.k8s.io/v1beta1 HTTP/1.1\r\nHost: x\r\nX-Remote-Group: {}\r\n",
        "g".repeat(MAX_REQUEST_HEAD)
    );
    // The server may stop reading (and close) before all of it is written.
    let _ = tls.write_all(long.as_bytes()).await;
    let _ = tls.flush().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), tls.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "still open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
}
