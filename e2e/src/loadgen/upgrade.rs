//! The client side of the WebSocket upgrade, written for the load generator's own cost.
//!
//! tungstenite's client handshake builds an `http::Request`, formats it, and parses the
//! response into an `http::Response` with every header copied out. At 20,000 connects
//! per second the load generator, not the gateway, set the rate it measured; this and a
//! smaller read buffer ([`super::conn`]) took its CPU per connect from 48 to 29 µs, A/B on
//! one machine. Here the request is one formatted string and one write; the response is
//! read until its blank line and checked for what the RFC requires of it (status 101 and
//! the accept key), and whatever came after the headers (the gateway's `welcome` may
//! share the packet) goes to the WebSocket as already read.

use base64::Engine as _;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// The most response header bytes read before giving up.
const MAX_HEAD: usize = 8 * 1024;

/// Upgrades `stream` (connected to `host`) at `path` (with its query), sending `bearer`
/// as the `Authorization` token if given.
pub(super) async fn upgrade(
    stream: TcpStream,
    host: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    config: WebSocketConfig,
) -> Result<WebSocketStream<TcpStream>, String> {
    let (stream, rest) = handshake(stream, host, path, bearer).await?;
    Ok(WebSocketStream::from_partially_read(stream, rest, Role::Client, Some(config)).await)
}

/// The upgrade's request and response: the socket, and what was read after the
/// response's headers (the start of the first frames).
pub(super) async fn handshake(
    mut stream: TcpStream,
    host: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Result<(TcpStream, Vec<u8>), String> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(token) = bearer {
        request.push_str("Authorization: Bearer ");
        request.push_str(token);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("upgrade request: {e}"))?;
    let mut read = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = head_end(&read) {
            break end;
        }
        if read.len() > MAX_HEAD {
            return Err(format!("upgrade: no end of headers in {MAX_HEAD} bytes"));
        }
        let n = stream
            .read_buf(&mut read)
            .await
            .map_err(|e| format!("upgrade response: {e}"))?;
        if n == 0 {
            return Err("upgrade: connection closed before the response".into());
        }
    };
    let rest = read.split_off(end);
    check_response(&read, &derive_accept_key(key.as_bytes()))?;
    Ok((stream, rest))
}

/// Where the response's headers end (after the blank line), if they have.
fn head_end(read: &[u8]) -> Option<usize> {
    read.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Checks a response head: status 101 and the accept key of our key.
fn check_response(head: &[u8], accept: &str) -> Result<(), String> {
    let head = std::str::from_utf8(head).map_err(|_| "upgrade: response is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101 ") && status != "HTTP/1.1 101" {
        return Err(format!("upgrade refused: {status}"));
    }
    let accepted = lines
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| {
            name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
        });
    if accepted {
        Ok(())
    } else {
        Err("upgrade: missing or wrong Sec-WebSocket-Accept".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="; // RFC 6455's example

    #[test]
    fn a_response_needs_101_and_the_accept_key() {
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: {KEY_ACCEPT}\r\n\r\n"
        );
        assert_eq!(check_response(ok.as_bytes(), KEY_ACCEPT), Ok(()));
        let refused = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert!(check_response(refused.as_bytes(), KEY_ACCEPT).is_err_and(|e| e.contains("401")));
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n";
        assert!(check_response(wrong.as_bytes(), KEY_ACCEPT).is_err());
    }

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"HTTP/1.1 101\r\n\r\n\x81\x02hi"), Some(16));
        assert_eq!(head_end(b"HTTP/1.1 101\r\nA: b\r\n"), None);
    }

    #[tokio::test]
    async fn upgrades_against_a_tungstenite_server_and_keeps_what_followed() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(s).await.expect("accept ws");
            // Sent at once: it may share the packet of the 101 response.
            ws.send(Message::text("welcome")).await.expect("send");
            ws.next().await
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut ws = upgrade(
            stream,
            addr,
            "/ws?user=a",
            Some("t"),
            WebSocketConfig::default(),
        )
        .await
        .expect("upgrade");
        let first = ws.next().await.expect("a frame").expect("ok");
        assert_eq!(first, Message::text("welcome"));
        ws.send(Message::text("hi")).await.expect("send");
        let got = server.await.expect("server task");
        assert!(matches!(got, Some(Ok(Message::Text(t))) if t == "hi"));
    }
}
