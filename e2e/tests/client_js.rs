//! The browser client (`gateway/static/client.js`) against real gateways, run by Node,
//! and the embedded assets over HTTP. Needs `node` (>= 20) on PATH or in `$NODE`; the
//! test fails, with the reason, when it is missing: it never passes without running.
//! The full browser test (headless Chromium) is separate: e2e/browser/README.md.

use chat_gateway::config::AuthMode;
use e2e::{jwt, test_config, TestGateway};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const SECRET: &str = "client-js-test-secret-0123456789ab";

/// The node binary and the flags it needs for a global `WebSocket`.
fn node() -> (PathBuf, Vec<&'static str>) {
    let node = PathBuf::from(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
    let probe = |flags: &[&str]| {
        Command::new(&node)
            .args(flags)
            .args([
                "-e",
                "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
            ])
            .status()
    };
    match probe(&[]) {
        Ok(s) if s.success() => (node, vec![]),
        Ok(_) => match probe(&["--experimental-websocket"]) {
            Ok(s) if s.success() => (node, vec!["--experimental-websocket"]),
            other => panic!(
                "{} has no WebSocket, not even with --experimental-websocket ({other:?}): \
                 Node 20 or newer is needed",
                node.display()
            ),
        },
        Err(e) => panic!(
            "node not found ({}: {e}). This test runs gateway/static/client.js in Node 20+: \
             `make test` sets NODE to one (e2e/browser/node.sh), or set NODE=/path/to/node",
            node.display()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_js_chats_reconnects_and_resumes_in_node() {
    let (node, flags) = node();
    // A short goaway jitter: the script waits out reconnect_after_ms.
    let mut config_a = test_config();
    config_a.drain.reconnect_jitter = Duration::from_millis(300);
    let a = TestGateway::start(config_a).await;
    let b = TestGateway::default().await;
    // A third one that checks JWTs: the browser way of presenting them is tested too.
    let mut jwt_config = test_config();
    jwt_config.auth.mode = AuthMode::Jwt;
    jwt_config.auth.jwt.secret = Some(SECRET.into());
    let c = TestGateway::start(jwt_config).await;
    // A fourth with a small command burst: a client's gap refill must pace itself.
    let mut slow_config = test_config();
    slow_config.limits.message_burst = 4;
    let d = TestGateway::start(slow_config).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/client_node.mjs");
    let mut cmd = tokio::process::Command::new(node);
    cmd.args(&flags)
        .arg(&script)
        .env("GATEWAY_A", a.http_url(""))
        .env("GATEWAY_B", b.http_url(""))
        .env("GATEWAY_JWT", c.http_url(""))
        .env("GATEWAY_SLOW", d.http_url(""))
        .env("TOKEN_OK", jwt::hs256(SECRET, "tina", 300))
        .env("TOKEN_BAD", jwt::hs256("not-the-secret", "tina", 300))
        .env("CLIENT_JS_HARNESS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("node runs");
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        panic!("node's pipes");
    };
    let stderr_text = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    // The script asks for server-side actions with `@@ACTION` lines and waits for a reply.
    let conversation = async {
        let mut transcript = String::new();
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            transcript.push_str(&line);
            transcript.push('\n');
            if line == "@@EVICT_A" {
                // What drain and rebalance do: goaway + 1012 to every connection.
                let mut told = 0;
                while chat_gateway::drain::evict_one(
                    &a.gateway.node,
                    chat_gateway::disconnect::REBALANCE,
                ) {
                    told += 1;
                }
                let _ = stdin.write_all(format!("{told}\n").as_bytes()).await;
            }
        }
        transcript
    };
    let transcript = tokio::time::timeout(Duration::from_secs(120), conversation)
        .await
        .expect("client_node.mjs finished within 120 s");
    let status = child.wait().await.expect("node exit status");
    let stderr = stderr_text.await.unwrap_or_default();
    assert!(
        status.success() && transcript.contains("all checks passed"),
        "client_node.mjs failed ({status}):\n{transcript}\n{stderr}"
    );
    // client.js catches and logs what a listener throws; the script's assertions inside
    // listeners must not vanish that way.
    assert!(
        !stderr.contains("listener failed"),
        "a listener in client_node.mjs failed:\n{stderr}"
    );
    a.stop().await;
    b.stop().await;
    c.stop().await;
    d.stop().await;
}

/// One raw HTTP/1.1 exchange: (status, lower-cased headers, body).
async fn exchange(
    addr: std::net::SocketAddr,
    request: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[tokio::test]
async fn demo_page_and_client_are_served_with_headers() {
    let gw = TestGateway::default().await;
    let addr = gw.gateway.addr;
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
    };

    let (status, h, body) = exchange(addr, &get("/", "")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
    assert!(body.contains("/app.js"), "{body}");
    let csp = header(&h, "content-security-policy");
    assert!(
        csp.contains(&format!("connect-src 'self' ws://{addr} wss://{addr};")),
        "{csp}"
    );

    let (status, h, body) = exchange(addr, &get("/client.js", "")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "text/javascript; charset=utf-8");
    assert!(body.contains("export class ChatClient"));
    let etag = header(&h, "etag").to_string();
    assert_eq!(header(&h, "cache-control"), "no-cache");

    let (status, h, body) = exchange(
        addr,
        &get("/client.js", &format!("If-None-Match: {etag}\r\n")),
    )
    .await;
    assert_eq!(status, 304);
    assert_eq!(header(&h, "etag"), etag);
    assert!(body.is_empty());

    let head = format!("HEAD /style.css HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, h, body) = exchange(addr, &head).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "text/css; charset=utf-8");
    assert!(body.is_empty(), "HEAD has no body: {body}");

    let post = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(exchange(addr, &post).await.0, 405);
    assert_eq!(exchange(addr, &get("/nope.js", "")).await.0, 404);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_js_refreshes_tokens_before_they_expire() {
    use chat_gateway::config::{JoinPolicy, NamespaceConfig, SendPolicy};
    let (node, flags) = node();
    let mut config = test_config();
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt.secret = Some(SECRET.into());
    config.auth.jwt.leeway = Duration::ZERO;
    config.auth.expiry_warning = Duration::from_secs(2);
    config.namespaces = vec![NamespaceConfig {
        prefix: "vip:".into(),
        join: JoinPolicy::Grant,
        send: SendPolicy::Grant,
        ..Default::default()
    }];
    let gw = TestGateway::start(config).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/refresh_node.mjs");
    let out = tokio::process::Command::new(node)
        .args(&flags)
        .arg(&script)
        .env("GATEWAY", gw.http_url(""))
        .env("SECRET", SECRET)
        .env("AUDIENCE", jwt::AUDIENCE)
        .output()
        .await
        .expect("run node");
    assert!(
        out.status.success(),
        "refresh_node.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: refreshed in place"));
    gw.stop().await;
}
