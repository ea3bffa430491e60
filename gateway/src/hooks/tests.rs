//! The hook client and the notifier against a real HTTP server on loopback: what a 2xx
//! without JSON means for a notification, the breaker's one trial call, and the posts at
//! shutdown.

use super::client::{HookClient, HookError};
use super::events::{Event, Notifier};
use crate::config::{EventsConfig, HookConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bodies a backend received, in order of arrival.
pub(crate) type Received = Arc<Mutex<Vec<String>>>;

/// A backend on loopback that answers every POST with `status` and no body, after
/// `delay` (`None`: never answers). Returns its address and what it received.
async fn backend(status: u16, delay: Option<Duration>) -> (SocketAddr, Received) {
    answering(status, "", delay).await
}

/// [`backend`] answering with `answer` as its body (JSON for a decision hook).
pub(crate) async fn answering(
    status: u16,
    answer: &'static str,
    delay: Option<Duration>,
) -> (SocketAddr, Received) {
    judging(move |_| status, answer, delay).await
}

/// [`answering`] with the status `judge` gives each request's body.
async fn judging(
    judge: impl Fn(&[u8]) -> u16 + Clone + Send + Sync + 'static,
    answer: &'static str,
    delay: Option<Duration>,
) -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received: Received = Arc::default();
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let judge = judge.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                let judge = judge.clone();
                async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    let status = judge(&body);
                    seen.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&body).into_owned());
                    match delay {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                    let mut answer = hyper::Response::new(Full::new(Bytes::from(answer)));
                    *answer.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                    Ok::<_, hyper::Error>(answer)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, received)
}

fn notifier(addr: SocketAddr, batch: usize) -> Notifier {
    let cfg = EventsConfig {
        url: format!("http://{addr}/events"),
        batch,
        kinds: vec!["connected".into()],
        ..Default::default()
    };
    Notifier::new(cfg, prometheus::IntCounter::new("d", "d").expect("counter"))
}

/// A `connected` event of `session`.
pub(crate) fn connected(session: &str) -> Event {
    Event::Connected {
        user: "ann".into(),
        session: session.into(),
        node: "n".into(),
        ts: 1,
    }
}

/// A `message` event whose body is a JSON string of `len` bytes.
pub(crate) fn message(len: usize) -> Event {
    let body = format!("\"{}\"", "x".repeat(len.saturating_sub(2)));
    Event::Message {
        room: "team:blue".into(),
        seq: 1,
        epoch: "e".into(),
        msg_id: "m".into(),
        from: "ann".into(),
        ts: 1,
        body: serde_json::value::RawValue::from_string(body).expect("a JSON string"),
    }
}

/// The sessions of the `connected` events in each batch a backend received.
fn sessions(received: &Received) -> Vec<String> {
    let batches = received.lock().expect("lock").clone();
    batches
        .iter()
        .flat_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap_or_default();
            let events = v["events"].as_array().cloned().unwrap_or_default();
            events
                .into_iter()
                .map(|e| e["session"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A backend answering a notification 204 No Content (or 200 with no body) took it:
/// before, the answer was read as JSON, failed, and the batch was posted again every few
/// seconds for as long as the gateway ran.
#[tokio::test]
async fn a_notification_answered_without_a_body_is_delivered_once() {
    for status in [204, 200] {
        let (addr, received) = backend(status, Some(Duration::ZERO)).await;
        let n = notifier(addr, 100);
        n.notify(connected("s1"));
        n.flush().await;
        n.flush().await;
        assert_eq!(sessions(&received), ["s1"], "HTTP {status}");
    }
}

/// At shutdown the gateway flushes while the poster may still have a batch out: each
/// event reaches the backend once and in order (before, both posted the queue's front).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_flush_and_the_poster_post_each_batch_once_in_order() {
    let (addr, received) = backend(204, Some(Duration::from_millis(200))).await;
    let n = Arc::new(notifier(addr, 1));
    for s in ["s1", "s2", "s3"] {
        n.notify(connected(s));
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let poster = tokio::spawn({
        let (n, stop) = (n.clone(), stop.clone());
        async move { n.run(stop).await }
    });
    while received.lock().expect("lock").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel(); // the first batch is out
    n.flush().await;
    let _ = poster.await;
    assert_eq!(sessions(&received), ["s1", "s2", "s3"]);
}

/// Once the breaker's cooldown is over, one call tries the backend; the others are
/// refused at once until it answers, instead of each waiting out a hung backend.
#[tokio::test]
async fn after_the_cooldown_one_trial_call_goes_out() {
    let (addr, received) = backend(200, None).await;
    let c = Arc::new(HookClient::new(HookConfig {
        url: format!("http://{addr}/join"),
        timeout: Duration::from_millis(500),
        retries: 0,
        breaker_failures: 1,
        breaker_cooldown: Duration::from_millis(10),
        ..Default::default()
    }));
    let first: Result<serde_json::Value, _> = c.call(&serde_json::json!({}), None).await;
    assert_eq!(first, Err(HookError::Timeout), "the breaker opens");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let trial = tokio::spawn({
        let c = c.clone();
        async move {
            c.call::<_, serde_json::Value>(&serde_json::json!({}), None)
                .await
        }
    });
    while received.lock().expect("lock").len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other: Result<serde_json::Value, _> = c.call(&serde_json::json!({}), None).await;
    assert_eq!(other, Err(HookError::CircuitOpen), "while the trial is out");
    assert_eq!(trial.await.ok(), Some(Err(HookError::Timeout)));
    assert_eq!(
        received.lock().expect("lock").len(),
        2,
        "the refused call sent nothing"
    );
}

/// A refusal stands whatever else the answer holds; the hook's own fields matter only
/// when allowed, and their `null` is their absence.
#[test]
fn a_refusal_is_read_before_the_hooks_own_fields() {
    use super::{read_answer, Answer, ConnectAnswer, JoinAnswer};
    use serde_json::json;
    let connect = |v: serde_json::Value| read_answer::<ConnectAnswer>(v);
    for (answer, reason) in [
        (
            json!({"allow": false, "reason": "banned", "rooms": 3}),
            "banned",
        ),
        (
            json!({"allow": false, "reason": 42, "rooms": null}),
            super::NO_REASON,
        ),
        (json!({"allow": false}), super::NO_REASON),
    ] {
        match connect(answer.clone()) {
            Ok(Answer::Deny(r)) => assert_eq!(r, reason, "{answer}"),
            other => panic!("{answer}: {other:?}"),
        }
    }
    match connect(json!({"allow": true, "rooms": null, "data": null})) {
        Ok(Answer::Allow(a)) => assert!(a.rooms.is_empty() && a.data.is_none()),
        other => panic!("{other:?}"),
    }
    match read_answer::<JoinAnswer>(json!({"allow": true, "send": null})) {
        Ok(Answer::Allow(a)) => assert!(a.send, "null is the default"),
        other => panic!("{other:?}"),
    }
    for bad in [
        json!({"allow": true, "rooms": 3}),
        json!({"allow": "yes"}),
        json!({"reason": "no allow"}),
        json!([true]),
    ] {
        assert!(
            matches!(connect(bad.clone()), Err(HookError::BadAnswer(_))),
            "{bad}"
        );
    }
}

/// An answer the hook cannot use fails its own call, but does not open the breaker: the
/// backend is up, and what it answers 4xx to is partly the client's input.
#[tokio::test]
async fn a_4xx_or_an_answer_that_is_not_json_does_not_open_the_breaker() {
    for (status, answer) in [(400, "{}"), (404, ""), (200, "not json")] {
        let (addr, received) = answering(status, answer, Some(Duration::ZERO)).await;
        let c = HookClient::new(HookConfig {
            url: format!("http://{addr}/send"),
            breaker_failures: 1,
            ..Default::default()
        });
        for _ in 0..3 {
            let r: Result<serde_json::Value, _> = c.call(&serde_json::json!({}), None).await;
            assert!(
                matches!(r, Err(HookError::BadAnswer(_) | HookError::Status(_))),
                "{status}: {r:?}"
            );
        }
        assert_eq!(
            received.lock().expect("lock").len(),
            3,
            "{status}: all sent"
        );
    }
}

/// A connection the backend drops after taking the request is not retried: the backend
/// may have acted on it.
#[tokio::test]
async fn a_connection_lost_after_the_request_went_out_is_not_retried() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let c = HookClient::new(HookConfig {
        url: format!("http://{addr}/send"),
        retries: 3,
        ..Default::default()
    });
    let r: Result<serde_json::Value, _> = c.call(&serde_json::json!({}), None).await;
    assert!(matches!(r, Err(HookError::Lost(_))), "{r:?}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A batch too large for the backend (413) goes again in halves, down to one event; an
/// event refused so by itself is dropped and counted instead of blocking the queue (it was
/// posted again every few seconds for as long as the gateway ran, and everything newer
/// waited behind it until dropped). Every other event reaches the backend, in order.
#[tokio::test]
async fn a_batch_answered_413_goes_again_in_halves_and_an_event_too_large_alone_is_dropped() {
    const LIMIT: usize = 4_000;
    let (addr, received) = judging(
        |body| if body.len() > LIMIT { 413 } else { 204 },
        "",
        Some(Duration::ZERO),
    )
    .await;
    let dropped = prometheus::IntCounter::new("d", "d").expect("counter");
    let n = Notifier::new(
        EventsConfig {
            url: format!("http://{addr}/events"),
            batch: 16,
            kinds: vec!["message".into(), "connected".into()],
            ..Default::default()
        },
        dropped.clone(),
    );
    for i in 0..12 {
        n.notify(connected(&format!("s{i}")));
        n.notify(message(if i == 5 { 2 * LIMIT } else { 1_000 }));
    }
    n.flush().await;
    assert_eq!(
        dropped.get(),
        1,
        "the one event larger than the backend takes"
    );
    let taken: Vec<serde_json::Value> = received
        .lock()
        .expect("lock")
        .iter()
        .filter(|b| b.len() <= LIMIT)
        .flat_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap_or_default();
            v["events"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    let sessions: Vec<&str> = taken.iter().filter_map(|e| e["session"].as_str()).collect();
    let expected: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    assert_eq!(sessions, expected, "every connected event, once, in order");
    assert_eq!(
        taken.iter().filter(|e| e["kind"] == "message").count(),
        11,
        "every message but the one too large"
    );
}
