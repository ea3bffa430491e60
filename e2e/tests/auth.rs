//! Authentication at the upgrade: every bad token is refused with 401 before the upgrade.

use chat_gateway::config::{AuthMode, JwtAlgorithm};
use e2e::{jwt, test_config, Client, Connected, TestGateway};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &str = "test-secret-0123456789-0123456789";
const PRIVATE: &str = include_str!("fixtures/rs256-test-private.pem");
const PUBLIC: &str = include_str!("fixtures/rs256-test-public.pem");

async fn hs_gateway() -> TestGateway {
    let mut c = test_config();
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    TestGateway::start(c).await
}

async fn rs_gateway() -> TestGateway {
    let mut c = test_config();
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.algorithm = JwtAlgorithm::RS256;
    c.auth.jwt.public_key = Some(PUBLIC.into());
    TestGateway::start(c).await
}

async fn status_with_bearer(gw: &TestGateway, token: &str) -> u16 {
    let mut req = gw.ws_url("").into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    match Client::connect_request(req).await {
        Connected::Ok(..) => 101,
        Connected::Refused(status, _) => status,
        Connected::Failed(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_bad_tokens_get_401() {
    let gw = hs_gateway().await;
    assert_eq!(
        status_with_bearer(&gw, &jwt::hs256(SECRET, "alice", 60)).await,
        101
    );
    // Missing token.
    match Client::connect_request(gw.ws_url("").into_client_request().expect("req")).await {
        Connected::Refused(status, body) => {
            assert_eq!(status, 401);
            assert!(body.contains("missing token"), "{body}");
        }
        Connected::Ok(..) => panic!("no token must be refused"),
        Connected::Failed(e) => panic!("{e}"),
    }
    // Insecure-mode user parameter means nothing here.
    assert!(Client::connect(&gw.ws_url("user=alice")).await.is_err());
    assert_eq!(
        status_with_bearer(&gw, &jwt::hs256(SECRET, "alice", -120)).await,
        401,
        "expired"
    );
    assert_eq!(
        status_with_bearer(&gw, &jwt::hs256("wrong-secret", "alice", 60)).await,
        401,
        "signature"
    );
    assert_eq!(status_with_bearer(&gw, "not.a.jwt").await, 401, "garbage");
    // alg "none": header {"alg":"none"}, payload {"sub":"alice","exp":9999999999}
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    assert_eq!(status_with_bearer(&gw, none).await, 401, "alg none");
    // An RS256 token presented to an HS256 gateway.
    assert_eq!(
        status_with_bearer(&gw, &jwt::rs256(PRIVATE, "alice", 60)).await,
        401,
        "RS on HS"
    );
    assert!(
        gw.metric("chatgateway_upgrades_rejected_total{reason=\"auth_invalid\"}")
            .await
            >= 5.0
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_required_when_configured() {
    let mut c = test_config();
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    c.auth.jwt.issuer = Some("https://id.example".into());
    c.auth.jwt.audience = Some("chat".into());
    let gw = TestGateway::start(c).await;
    let exp = jwt::unix_now() + 60;
    let token = |claims: serde_json::Value| jwt::hs256_claims(SECRET, &claims);
    let cases = [
        (
            json!({"sub": "ida", "exp": exp, "iss": "https://id.example", "aud": "chat"}),
            101,
            "both right",
        ),
        (
            json!({"sub": "ida", "exp": exp, "iss": "https://id.example", "aud": ["other", "chat"]}),
            101,
            "aud list",
        ),
        (
            json!({"sub": "ida", "exp": exp, "aud": "chat"}),
            401,
            "no iss",
        ),
        (
            json!({"sub": "ida", "exp": exp, "iss": "https://evil.example", "aud": "chat"}),
            401,
            "wrong iss",
        ),
        (
            json!({"sub": "ida", "exp": exp, "iss": "https://id.example"}),
            401,
            "no aud",
        ),
        (
            json!({"sub": "ida", "exp": exp, "iss": "https://id.example", "aud": "mail"}),
            401,
            "wrong aud",
        ),
        (
            json!({"sub": "ida", "iss": "https://id.example", "aud": "chat"}),
            401,
            "no exp",
        ),
    ];
    for (claims, want, what) in cases {
        assert_eq!(
            status_with_bearer(&gw, &token(claims)).await,
            want,
            "{what}"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exp_and_nbf_are_enforced_with_the_leeway() {
    let mut c = test_config();
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    c.auth.jwt.leeway = std::time::Duration::from_secs(30);
    let gw = TestGateway::start(c).await;
    let now = jwt::unix_now();
    let token = |claims: serde_json::Value| jwt::hs256_claims(SECRET, &claims);
    let cases = [
        (
            json!({"sub": "lee", "exp": now - 10, "aud": jwt::AUDIENCE}),
            101,
            "expired 10 s ago, within the leeway",
        ),
        (
            json!({"sub": "lee", "exp": now - 90, "aud": jwt::AUDIENCE}),
            401,
            "expired 90 s ago",
        ),
        (
            json!({"sub": "lee", "exp": now + 60, "nbf": now + 10, "aud": jwt::AUDIENCE}),
            101,
            "valid in 10 s, within the leeway",
        ),
        (
            json!({"sub": "lee", "exp": now + 600, "nbf": now + 90, "aud": jwt::AUDIENCE}),
            401,
            "valid only in 90 s",
        ),
    ];
    for (claims, want, what) in cases {
        assert_eq!(
            status_with_bearer(&gw, &token(claims)).await,
            want,
            "{what}"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_hs_rs_confusion() {
    let gw = rs_gateway().await;
    let mut ok = Client::connect(&gw.ws_url(&format!("token={}", jwt::rs256(PRIVATE, "ruth", 60))))
        .await
        .expect("rs256 via ?token=");
    assert_eq!(ok.welcome["user"], "ruth");
    assert_eq!(
        ok.request(serde_json::json!({"type": "ping"})).await["type"],
        "ok"
    );
    // The classic confusion attack: HS256 signed with the *public key* as the secret.
    let forged = jwt::hs256(PUBLIC, "ruth", 60);
    assert_eq!(status_with_bearer(&gw, &forged).await, 401);
    assert_eq!(
        status_with_bearer(&gw, &jwt::rs256(PRIVATE, "ruth", -120)).await,
        401
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_subprotocol_echoes_the_chosen_protocol() {
    let gw = hs_gateway().await;
    let token = jwt::hs256(SECRET, "sam", 60);
    let mut req = gw.ws_url("").into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("chatgw.v1, bearer.{token}")).expect("header"),
    );
    match Client::connect_request(req).await {
        Connected::Ok(client, resp) => {
            assert_eq!(client.welcome["user"], "sam");
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some("chatgw.v1")
            );
        }
        Connected::Refused(s, b) => panic!("refused {s}: {b}"),
        Connected::Failed(e) => panic!("{e}"),
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list_and_per_ip_limit() {
    let mut c = test_config();
    c.server.allowed_origins = vec!["https://app.example".into()];
    c.limits.connections_per_ip = 2;
    let gw = TestGateway::start(c).await;
    let with_origin = |origin: &'static str| {
        let mut req = gw.ws_url("user=o").into_client_request().expect("request");
        req.headers_mut()
            .insert("origin", HeaderValue::from_static(origin));
        req
    };
    match Client::connect_request(with_origin("https://evil.example")).await {
        Connected::Refused(status, _) => assert_eq!(status, 403),
        Connected::Ok(..) | Connected::Failed(_) => panic!("foreign origin must be refused"),
    }
    let Connected::Ok(a, _) = Client::connect_request(with_origin("https://app.example")).await
    else {
        panic!("allowed origin refused")
    };
    let b = gw.connect("o").await;
    match Client::connect_request(gw.ws_url("user=o").into_client_request().expect("req")).await {
        Connected::Refused(status, _) => assert_eq!(status, 429),
        Connected::Ok(..) | Connected::Failed(_) => {
            panic!("third connection from one IP must be refused")
        }
    }
    drop((a, b));
    // A slot is freed once the connection's task has closed its session.
    let freed = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gw.gateway.node.connection_count() > 0 {
        assert!(
            std::time::Instant::now() < freed,
            "connections never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        Client::connect(&gw.ws_url("user=o")).await.is_ok(),
        "slots are freed on close"
    );
    gw.stop().await;
}
