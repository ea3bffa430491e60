//! A protocol v1 test client over a real socket.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected client that has received its `welcome`.
pub struct Client {
    ws: Ws,
    next_id: u64,
    /// Frames received while waiting for something else, oldest first.
    pending: VecDeque<Value>,
    /// Ids given to commands by [`send_cmd`](Client::send_cmd).
    issued: HashSet<u64>,
    /// Replies (`ok`/`error` frames with a `ref`) read so far, per `ref`.
    replies: HashMap<String, u32>,
    /// The `welcome` frame.
    pub welcome: Value,
}

/// An upgrade the server refused with an HTTP status.
#[derive(Debug)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: tungstenite::http::HeaderMap,
    /// Response body.
    pub body: String,
}

impl Refusal {
    /// The `Retry-After` header in whole seconds, if present and a number.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get("retry-after")?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// Result of an upgrade attempt, with the headers of a refusal.
pub enum Upgrade {
    /// Upgrade accepted; the response headers are kept for inspection.
    Ok(Box<Client>, tungstenite::http::Response<Option<Vec<u8>>>),
    /// Refused with an HTTP response.
    Refused(Refusal),
    /// No HTTP answer at all (connection refused, reset, bad handshake).
    Failed(String),
}

/// Result of an upgrade attempt.
pub enum Connected {
    /// Upgrade accepted; the response headers are kept for inspection.
    Ok(Box<Client>, tungstenite::http::Response<Option<Vec<u8>>>),
    /// Refused with this HTTP status and body.
    Refused(u16, String),
    /// No HTTP answer at all (connection refused, reset, bad handshake).
    Failed(String),
}

impl Client {
    /// Connects to a `ws://` URL and waits for `welcome`.
    pub async fn connect(url: &str) -> Result<Client, String> {
        let req = url.into_client_request().map_err(|e| e.to_string())?;
        match Self::connect_request(req).await {
            Connected::Ok(c, _) => Ok(*c),
            Connected::Refused(status, body) => Err(format!("HTTP {status}: {body}")),
            Connected::Failed(e) => Err(e),
        }
    }

    /// Connects with a `Authorization: Bearer` token and waits for `welcome`.
    pub async fn connect_bearer(url: &str, token: &str) -> Result<Client, String> {
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        req.headers_mut().insert("authorization", value);
        match Self::connect_request(req).await {
            Connected::Ok(c, _) => Ok(*c),
            Connected::Refused(status, body) => Err(format!("HTTP {status}: {body}")),
            Connected::Failed(e) => Err(e),
        }
    }

    /// Connects with a prepared request (custom headers), reporting refusals.
    pub async fn connect_request(req: tungstenite::handshake::client::Request) -> Connected {
        match Self::upgrade(req).await {
            Upgrade::Ok(c, resp) => Connected::Ok(c, resp),
            Upgrade::Refused(r) => Connected::Refused(r.status, r.body),
            Upgrade::Failed(e) => Connected::Failed(e),
        }
    }

    /// Like [`connect_request`](Self::connect_request), keeping a refusal's headers
    /// (`Retry-After`, `WWW-Authenticate`).
    pub async fn upgrade(req: tungstenite::handshake::client::Request) -> Upgrade {
        match tokio_tungstenite::connect_async(req).await {
            Ok((mut ws, resp)) => {
                let welcome: Value = match tokio::time::timeout(WAIT, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        serde_json::from_str(&t).expect("welcome is json")
                    }
                    other => panic!("expected welcome, got {other:?}"),
                };
                assert_eq!(welcome["type"], "welcome");
                Upgrade::Ok(
                    Box::new(Client {
                        ws,
                        next_id: 1,
                        pending: VecDeque::new(),
                        issued: HashSet::new(),
                        replies: HashMap::new(),
                        welcome,
                    }),
                    resp,
                )
            }
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .unwrap_or_default();
                Upgrade::Refused(Refusal {
                    status: resp.status().as_u16(),
                    headers: resp.headers().clone(),
                    body,
                })
            }
            Err(e) => Upgrade::Failed(e.to_string()),
        }
    }

    /// Counts a reply. Every command gets exactly one (docs/protocol.md): a second reply
    /// to a command this client sent with [`send_cmd`](Self::send_cmd) fails the test at
    /// once, wherever it is read (commands sent raw may reuse ids on purpose; use
    /// [`replies_to`](Self::replies_to) for those).
    fn note(&mut self, frame: &Value) {
        if !(frame["type"] == "ok" || frame["type"] == "error") || frame["ref"].is_null() {
            return;
        }
        let n = self.replies.entry(frame["ref"].to_string()).or_insert(0);
        *n += 1;
        if *n > 1
            && frame["ref"]
                .as_u64()
                .is_some_and(|id| self.issued.contains(&id))
        {
            panic!(
                "command {} got reply number {n}: {frame} (every command gets exactly one)",
                frame["ref"]
            );
        }
    }

    /// How many replies (`ok` or `error`) with this `ref` were read so far.
    pub fn replies_to(&self, id: &Value) -> u32 {
        self.replies.get(&id.to_string()).copied().unwrap_or(0)
    }

    /// The resume token from `welcome`.
    pub fn resume_token(&self) -> String {
        self.welcome["resume_token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(msg).await
    }

    /// Sends a command without waiting; returns the id it was given.
    pub async fn send_cmd(&mut self, cmd: Value) -> u64 {
        self.try_send_cmd(cmd).await.expect("send command")
    }

    /// Sends a command without waiting; returns the id it was given, or None when the
    /// connection is gone (a client that reconnects treats that as the end of it).
    pub async fn try_send_cmd(&mut self, mut cmd: Value) -> Option<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.issued.insert(id);
        cmd["id"] = json!(id);
        self.ws.send(Message::text(cmd.to_string())).await.ok()?;
        Some(id)
    }

    /// Sends a command and returns its `ok` or `error` reply; other frames are kept.
    pub async fn request(&mut self, cmd: Value) -> Value {
        let id = self.send_cmd(cmd).await;
        self.reply(id).await
    }

    /// Waits for the reply to command `id`.
    pub async fn reply(&mut self, id: u64) -> Value {
        self.try_reply(id)
            .await
            .unwrap_or_else(|| panic!("no reply to command {id}"))
    }

    /// Sends a command and returns its reply, or None when the connection ends (or
    /// nothing comes within [`WAIT`]) first.
    pub async fn try_request(&mut self, cmd: Value) -> Option<Value> {
        let id = self.try_send_cmd(cmd).await?;
        self.try_reply(id).await
    }

    /// Waits for the reply to command `id`; None when the connection ends (or nothing
    /// comes within [`WAIT`]) first. Other frames are kept.
    pub async fn try_reply(&mut self, id: u64) -> Option<Value> {
        let is_reply =
            |f: &Value| f["ref"] == json!(id) && (f["type"] == "ok" || f["type"] == "error");
        if let Some(pos) = self.pending.iter().position(is_reply) {
            return self.pending.remove(pos);
        }
        loop {
            let frame = self.read().await?;
            if is_reply(&frame) {
                return Some(frame);
            }
            self.pending.push_back(frame);
        }
    }

    /// Joins a room and asserts success.
    pub async fn join(&mut self, room: &str) -> Value {
        let r = self.request(json!({"type": "join", "room": room})).await;
        assert_eq!(r["type"], "ok", "join {room}: {r}");
        r
    }

    /// Sends a body to a room and returns the reply.
    pub async fn send(&mut self, room: &str, body: Value) -> Value {
        self.request(json!({"type": "send", "room": room, "body": body}))
            .await
    }

    /// Reads the next text frame (pending ones first); None on timeout or close.
    pub async fn next_frame(&mut self) -> Option<Value> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        self.read().await
    }

    /// The next `msg` frame, skipping others; panics after [`WAIT`].
    pub async fn next_msg(&mut self) -> Value {
        loop {
            let f = self.next_frame().await.expect("expected a msg frame");
            if f["type"] == "msg" {
                return f;
            }
        }
    }

    /// Collects `msg` frames until none arrives for `quiet`.
    pub async fn drain_msgs(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        while let Some(f) = self.pending.pop_front() {
            if f["type"] == "msg" {
                out.push(f);
            }
        }
        while let Ok(Some(f)) = tokio::time::timeout(quiet, self.read()).await {
            if f["type"] == "msg" {
                out.push(f);
            }
        }
        out
    }

    /// Collects every text frame (pending ones first) until none arrives for `quiet`.
    pub async fn frames_for(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = self.pending.drain(..).collect();
        while let Ok(Some(f)) = tokio::time::timeout(quiet, self.read()).await {
            out.push(f);
        }
        out
    }

    /// The next WebSocket message of any kind (pings and the close frame included); None
    /// after [`WAIT`] or when the socket ended. Frames already read are not returned.
    pub async fn next_raw(&mut self) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.ws.next()).await {
            Ok(Some(Ok(m))) => {
                if let Message::Text(t) = &m {
                    if let Ok(frame) = serde_json::from_str::<Value>(t) {
                        self.note(&frame);
                    }
                }
                Some(m)
            }
            _ => None,
        }
    }

    /// The next frame of a given type, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        if let Some(pos) = self.pending.iter().position(|f| f["type"] == kind) {
            return self.pending.remove(pos).unwrap_or_default();
        }
        loop {
            let f = self
                .read()
                .await
                .unwrap_or_else(|| panic!("expected a {kind} frame"));
            if f["type"] == kind {
                return f;
            }
            self.pending.push_back(f);
        }
    }

    /// The next text frame with no time limit (pending ones first); None once closed.
    pub async fn recv(&mut self) -> Option<Value> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let frame: Value = serde_json::from_str(&t).ok()?;
                    self.note(&frame);
                    return Some(frame);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn read(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let frame: Value = serde_json::from_str(&t).expect("server frames are json");
                    self.note(&frame);
                    return Some(frame);
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Err(_) | Ok(Some(Err(_))) => {
                    return None
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason (None if the
    /// socket ended without a close frame).
    pub async fn expect_close(&mut self) -> Option<(u16, String)> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    return Some((f.code.into(), f.reason.to_string()))
                }
                Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => continue,
                Err(_) => panic!("server did not close the connection"),
            }
        }
    }

    /// Reads raw messages for `dur`, returning them (pings included).
    pub async fn raw_for(&mut self, dur: Duration) -> Vec<(std::time::Instant, Message)> {
        let until = tokio::time::Instant::now() + dur;
        let mut out = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, self.ws.next()).await {
            out.push((std::time::Instant::now(), m));
        }
        out
    }

    /// Drops the socket without a close handshake (a lost connection).
    pub fn kill(self) {
        drop(self);
    }
}

/// A text message that never ends: its first fragment, then `n` empty continuations, as
/// raw frames (what a fragment flood sends; the gateway counts each against
/// `limits.frameRate`).
pub fn endless_message(n: usize) -> impl Iterator<Item = Message> {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;
    let start = Frame::message(Vec::new(), OpCode::Data(Data::Text), false);
    let empty = || Frame::message(Vec::new(), OpCode::Data(Data::Continue), false);
    std::iter::once(start)
        .chain(std::iter::repeat_with(empty).take(n))
        .map(Message::Frame)
}
