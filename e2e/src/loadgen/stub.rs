//! `stub`: a bare WebSocket endpoint, for the connect floor. It answers every upgrade with
//! a `101` and a `welcome` of the gateway's shape, then holds the socket, reading and
//! dropping whatever comes; nothing else (no authentication, no session, no engine). An
//! `idle` run against it, pinned where the gateway runs, shows how many connects per
//! second this load generator and this machine's loopback manage with no gateway behind
//! them: what bounds the gateway's own connect figures from above.

use chat_gateway::config::DEFAULT_LISTEN_BACKLOG;
use chat_gateway::protocol::push::Welcome;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The most an upgrade request may take (the gateway's limit on request heads is larger;
/// the load generator's requests are a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;

/// Serves upgrades on `listen` until the process is killed; prints the bound address
/// first (`--listen 127.0.0.1:0` picks a free port).
pub async fn stub(listen: SocketAddr) -> Result<serde_json::Value, String> {
    super::check_loopback(&listen)?;
    let listener = chat_gateway::server::bind(listen, DEFAULT_LISTEN_BACKLOG)
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("{}", serde_json::json!({ "mode": "stub", "listen": bound }));
    serve_all(listener).await;
    Err("the listener stopped".into())
}

/// Accepts connections for ever, each served in a task of its own.
async fn serve_all(listener: TcpListener) {
    let welcome = welcome_frame();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let welcome = welcome.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &welcome).await;
                });
            }
            // Out of files, or a connection reset before it was taken: back off and go
            // on, as the gateway does (yielding alone would spin while out of files).
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// One connection: the upgrade, the welcome, then reads until the client goes.
async fn serve(mut stream: TcpStream, welcome: &[u8]) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n") {
            break end;
        }
        if head.len() > MAX_HEAD {
            return stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
                .await;
        }
    };
    let Some(key) = header(&head[..end], "sec-websocket-key") else {
        return stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
    };
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    out.extend_from_slice(welcome);
    stream.write_all(&out).await?;
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

/// The gateway's `welcome` (same fields, same sizes) as one unmasked text frame.
fn welcome_frame() -> Vec<u8> {
    let welcome = Welcome {
        kind: "welcome".into(),
        protocol: chat_gateway::protocol::PROTOCOL_VERSION,
        session: "0123456789abcdef0123456789abcdef".into(),
        user: "idle0".into(),
        resume_token: "0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        heartbeat_ms: 25_000,
        node: "bench".into(),
        expires_at: None,
        rooms: Vec::new(),
        data: None,
    };
    super::floor::text_frame(&chat_gateway::protocol::to_json(&welcome))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A header's value in a request head (names compared without case).
fn header(head: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{idle::idle, Common};
    use std::time::Duration;

    #[test]
    fn a_header_is_found_whatever_its_case() {
        let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: abc==\r\n";
        assert_eq!(header(head, "sec-websocket-key").as_deref(), Some("abc=="));
        assert_eq!(header(head, "origin"), None);
    }

    #[tokio::test]
    async fn an_idle_run_connects_to_the_stub_and_reads_its_welcome() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = listener.local_addr().expect("addr");
        tokio::spawn(serve_all(listener));
        let common = Common::for_test(target);
        let out = idle(&common, 20, 4, Duration::from_millis(10))
            .await
            .expect("idle");
        assert_eq!(out["connections"], 20, "{out}");
        assert_eq!(out["errors"], 0, "{out}");
    }

    #[tokio::test]
    async fn a_request_without_a_key_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_all(listener));
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
}
