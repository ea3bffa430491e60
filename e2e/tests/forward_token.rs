//! A forwarded connection's token is held as a chat connection's: its expiry closes it
//! (4401) and so does the removal of the JWKS key that verified it (4403), the same close
//! to the client and to the upstream. Before, a forwarded connection outlived both. And a
//! token offered as the only subprotocol is refused before any dial.

use chat_gateway::config::{AuthMode, Config, RouteConfig};
use e2e::{jwt, keys, test_config, TestGateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An echoing upstream; each connection's close code (None: no close frame) arrives on
/// the channel once it ends.
async fn upstream() -> (String, mpsc::UnboundedReceiver<Option<u16>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closes, heard) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let closes = closes.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let mut code = None;
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Close(frame) = &m {
                        code = frame.as_ref().map(|f| u16::from(f.code));
                        break;
                    }
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
                let _ = closes.send(code);
            });
        }
    });
    (format!("ws://{addr}"), heard)
}

fn with_route(mut c: Config, upstream: &str) -> Config {
    c.auth.mode = AuthMode::Jwt;
    c.routes = vec![RouteConfig {
        name: "bots".into(),
        path_prefix: "/bots".into(),
        upstream: upstream.into(),
        ..Default::default()
    }];
    c
}

async fn connect(gw: &TestGateway, token: &str) -> Ws {
    let url = format!("ws://{}/bots?token={token}", gw.gateway.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("forwarded");
    ws.send(Message::text("ping")).await.expect("send");
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "ping"),
        "{echo:?}"
    );
    ws
}

/// The close code the client reads next (None: the stream ended without one).
async fn close_code(ws: &mut Ws) -> Option<u16> {
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(frame) = m {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("closed in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_connection_closes_when_its_token_expires() {
    const SECRET: &str = "forward-token-test-secret-0123456789abcdef";
    let (up, mut heard) = upstream().await;
    let mut c = with_route(test_config(), &up);
    c.auth.jwt.secret = Some(SECRET.into());
    c.auth.jwt.leeway = Duration::ZERO;
    let gw = TestGateway::start(c).await;
    let token = jwt::hs256_with(SECRET, None, &jwt::claims("ann", 2, json!({})));
    let mut ws = connect(&gw, &token).await;
    assert_eq!(close_code(&mut ws).await, Some(4401), "to the client");
    let upstream_heard = tokio::time::timeout(Duration::from_secs(5), heard.recv()).await;
    assert_eq!(upstream_heard, Ok(Some(Some(4401))), "to the upstream");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_connection_closes_when_its_key_is_removed() {
    let dir = std::env::temp_dir().join(format!("chatgw-fwd-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwks.json");
    let write = |keys: Vec<&Value>| {
        // A new file renamed over the old, as a Kubernetes Secret volume is updated.
        let tmp = dir.join("jwks.json.new");
        std::fs::write(&tmp, json!({ "keys": keys }).to_string()).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
    };
    let (old, new) = (keys::es256("es-1"), keys::es256("es-2"));
    write(vec![&old.jwk, &new.jwk]);
    let (up, mut heard) = upstream().await;
    let mut c = with_route(test_config(), &up);
    c.auth.jwt.jwks_file = Some(file.clone());
    c.auth.jwt.reload_interval = Duration::from_millis(200);
    let gw = TestGateway::start(c).await;
    let token = |key: &keys::TestKey, kid: &str| {
        let claims = jwt::claims("ann", 300, json!({}));
        jwt::sign_pem(
            jsonwebtoken::Algorithm::ES256,
            &key.private_pem,
            Some(kid),
            &claims,
        )
    };
    let mut on_old = connect(&gw, &token(&old, "es-1")).await;
    let mut on_new = connect(&gw, &token(&new, "es-2")).await;
    write(vec![&new.jwk]);
    assert_eq!(close_code(&mut on_old).await, Some(4403), "to the client");
    let upstream_heard = tokio::time::timeout(Duration::from_secs(5), heard.recv()).await;
    assert_eq!(upstream_heard, Ok(Some(Some(4403))), "to the upstream");
    on_new.send(Message::text("still")).await.expect("send");
    let echo = tokio::time::timeout(Duration::from_secs(5), on_new.next()).await;
    assert!(
        matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "still"),
        "the other key's connection stays: {echo:?}"
    );
    gw.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token offered as the only subprotocol (`bearer.<jwt>`) would get a 101 naming none
/// of the client's offers (the token is never passed on), which a browser fails: refused
/// with 400 before the upstream is dialled, as on the chat endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_offered_as_the_only_subprotocol_is_refused_before_a_dial() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    const SECRET: &str = "forward-token-test-secret-0123456789abcdef";
    let (up, mut heard) = upstream().await;
    let mut c = with_route(test_config(), &up);
    c.auth.jwt.secret = Some(SECRET.into());
    let gw = TestGateway::start(c).await;
    let token = jwt::hs256_with(SECRET, None, &jwt::claims("ann", 300, json!({})));
    let offer = |protocols: String| {
        let mut req = format!("ws://{}/bots", gw.gateway.addr)
            .into_client_request()
            .expect("request");
        let v = protocols.parse().expect("header");
        req.headers_mut().insert("sec-websocket-protocol", v);
        req
    };
    match tokio_tungstenite::connect_async(offer(format!("bearer.{token}"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("not refused: {:?}", other.map(|(_, r)| r.status())),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(heard.try_recv().is_err(), "nothing was dialled");
    gw.stop().await;
}
