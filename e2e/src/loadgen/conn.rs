//! The load generator's connections: open one, send a command and read its reply, the
//! members' WebSocket settings, the summary line.

use super::stats::table;
use super::upgrade::upgrade;
use super::Common;
use crate::procstat;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// The most one read of a socket takes. tungstenite zero-fills this much of its buffer
/// before every read, so it is also a cost per read: 16 KiB made each read of a small
/// frame a 16 KiB memset.
const READ_BUFFER: usize = 4 * 1024;

/// A member's WebSocket settings (`floor` reads with the same).
pub(super) fn member_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
}

/// Opens connection number `i` as `user` from a spread source address; returns the
/// socket after `welcome`.
pub(super) async fn open(c: &Common, i: usize, user: &str) -> Result<Ws, String> {
    let stream = connect(c, i).await?;
    let (path, token) = request(c, user);
    let mut ws = upgrade(stream, c.target, &path, token.as_deref(), member_config()).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => Ok(ws),
        other => Err(format!("expected welcome, got {other:?}")),
    }
}

/// Connection number `i`'s TCP connect, from a spread source address.
pub(super) async fn connect(c: &Common, i: usize) -> Result<TcpStream, String> {
    let src = if c.target.ip().is_ipv4() && c.source_ips > 0 {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % c.source_ips as usize) as u8,
        ))
    } else if c.target.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        c.target.ip()
    };
    let sock = if c.target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let stream = sock
        .connect(c.target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The upgrade's path and bearer token for `user`: a signed JWT with a secret, `?user=`
/// (the gateway's insecure dev mode) without.
pub(super) fn request(c: &Common, user: &str) -> (String, Option<String>) {
    match &c.jwt_secret {
        Some(secret) => ("/ws".into(), Some(crate::jwt::hs256(secret, user, 3600))),
        None => (format!("/ws?user={user}"), None),
    }
}

pub(super) async fn command(
    ws: &mut Ws,
    cmd: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let id = cmd["id"].clone();
    ws.send(Message::text(cmd.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(m) = ws.next().await {
        if let Message::Text(t) = m.map_err(|e| e.to_string())? {
            let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
            if v["ref"] == id {
                return if v["type"] == "ok" {
                    Ok(v)
                } else {
                    Err(v.to_string())
                };
            }
        }
    }
    Err("closed".into())
}

pub(super) fn gateway_usage(c: &Common) -> Option<procstat::Usage> {
    c.pid.and_then(|p| procstat::usage(p).ok())
}

pub(super) fn finish(c: &Common, mode: &str, mut v: serde_json::Value) -> serde_json::Value {
    v["mode"] = json!(mode);
    if !c.label.is_empty() {
        v["label"] = json!(c.label);
    }
    if c.table {
        eprint!("{}", table(&v));
    }
    v
}
