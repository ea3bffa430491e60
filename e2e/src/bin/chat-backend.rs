//! A tiny application backend for the hook tests and the worked example of
//! docs/backend.md: it answers the gateway's hooks and records its notifications.
//!
//!   chat-backend --listen 127.0.0.1:PORT [--slow-ms N]
//!
//! - `POST /connect`: refuses `mallory`; joins everyone else to `announcements` and
//!   passes `{"plan": "pro"}` for `welcome.data`.
//! - `POST /join`: refuses rooms with `secret` in their name; grants `readonly` rooms
//!   without send.
//! - `POST /send`: refuses the body `"spam"`; replaces `darn` in string bodies with `****`.
//! - `POST /refresh`: allows.
//! - `POST /events`: records the batch; `GET /events` returns every event so far.
//!
//! With `--slow-ms N` every hook answers after N ms (the timeout tests).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn answer(v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}

fn decide(path: &str, req: &Value) -> Value {
    match path {
        "/connect" if req["user"] == "mallory" => json!({"allow": false, "reason": "banned"}),
        "/connect" => json!({"allow": true, "rooms": ["announcements"], "data": {"plan": "pro"}}),
        "/join" => {
            let room = req["room"].as_str().unwrap_or_default();
            if room.contains("secret") {
                json!({"allow": false, "reason": "not invited"})
            } else {
                json!({"allow": true, "send": !room.contains("readonly")})
            }
        }
        "/send" if req["body"] == "spam" => json!({"allow": false, "reason": "no spam"}),
        "/send" => match req["body"].as_str() {
            Some(text) if text.contains("darn") => {
                json!({"allow": true, "body": text.replace("darn", "****")})
            }
            _ => json!({"allow": true}),
        },
        "/refresh" => json!({"allow": true}),
        _ => json!({"allow": false, "reason": "unknown hook"}),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let slow = Duration::from_millis(arg("--slow-ms").and_then(|v| v.parse().ok()).unwrap_or(0));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening {}", listener.local_addr()?);
    let events: Arc<Mutex<Vec<Value>>> = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let events = events.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let events = events.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let get = req.method() == hyper::Method::GET;
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let body: Value = body
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or(Value::Null);
                    let lock = |e: &Arc<Mutex<Vec<Value>>>| {
                        e.lock().unwrap_or_else(|p| p.into_inner()).clone()
                    };
                    let reply = match (get, path.as_str()) {
                        (true, "/events") => json!({"events": lock(&events)}),
                        (false, "/events") => {
                            let batch = body["events"].as_array().cloned().unwrap_or_default();
                            events
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend(batch);
                            json!({"ok": true})
                        }
                        (_, hook) => {
                            tokio::time::sleep(slow).await;
                            decide(hook, &body)
                        }
                    };
                    Ok::<_, std::convert::Infallible>(answer(reply))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
