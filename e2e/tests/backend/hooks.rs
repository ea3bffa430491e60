//! The hooks, answered by the `chat-backend` process.

use super::Backend;
use chat_gateway::config::{Config, FailurePolicy, HookConfig, JoinPolicy, NamespaceConfig};
use e2e::{test_config, Client, Connected, TestGateway};
use serde_json::json;
use std::time::{Duration, Instant};

/// A gateway whose hooks call `backend` (the connect hook only `with_connect`); `team:`
/// rooms are decided by the join hook.
async fn hooked(
    backend: &Backend,
    on_failure: FailurePolicy,
    timeout: Duration,
    with_connect: bool,
) -> TestGateway {
    TestGateway::start(hooked_config(backend, on_failure, timeout, with_connect)).await
}

/// The config of [`hooked`].
fn hooked_config(
    backend: &Backend,
    on_failure: FailurePolicy,
    timeout: Duration,
    with_connect: bool,
) -> Config {
    let mut c = test_config();
    let hook = |path: &str| HookConfig {
        timeout,
        on_failure,
        breaker_failures: 0,
        ..backend.hook(path)
    };
    c.hooks.connect = with_connect.then(|| hook("/connect"));
    c.hooks.join = Some(hook("/join"));
    c.hooks.send = Some(hook("/send"));
    c.hooks.events = Some(chat_gateway::config::EventsConfig {
        url: format!("http://{}/events", backend.addr),
        ..Default::default()
    });
    c.namespaces = vec![NamespaceConfig {
        prefix: "team:".into(),
        join: JoinPolicy::Backend,
        ..Default::default()
    }];
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_decide_connects_joins_and_sends_and_hear_what_happened() {
    let backend = Backend::start(0);
    let gw = hooked(
        &backend,
        FailurePolicy::Refuse,
        Duration::from_secs(2),
        true,
    )
    .await;
    match Client::connect_request(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            gw.ws_url("user=mallory"),
        )
        .expect("request"),
    )
    .await
    {
        Connected::Refused(status, body) => assert_eq!((status, body.trim()), (403, "banned")),
        _ => panic!("mallory got in"),
    }
    let mut alice = gw.connect("alice").await;
    assert_eq!(alice.welcome["data"], json!({"plan": "pro"}));
    assert_eq!(alice.welcome["rooms"], json!(["announcements"]));
    let mut bob = gw.connect("bob").await;
    assert_eq!(
        alice
            .request(json!({"type": "join", "room": "team:secret"}))
            .await["code"],
        "forbidden"
    );
    alice.join("team:blue").await;
    bob.join("team:blue").await;
    let r = bob
        .request(json!({"type": "join", "room": "team:readonly:x"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    assert_eq!(
        bob.request(json!({"type": "send", "room": "team:readonly:x", "body": 1}))
            .await["code"],
        "forbidden"
    );
    // The send hook: refused, and rewritten before it is stored.
    assert_eq!(
        alice
            .request(json!({"type": "send", "room": "team:blue", "body": "spam"}))
            .await["code"],
        "forbidden"
    );
    assert_eq!(
        alice.send("team:blue", json!("oh darn")).await["type"],
        "ok"
    );
    let seen = loop {
        let m = bob.next_msg().await;
        if m["room"] == "team:blue" {
            break m;
        }
    };
    assert_eq!(seen["body"], "oh ****", "members see the backend's body");
    let page = bob
        .request(json!({"type": "history", "room": "team:blue"}))
        .await;
    assert_eq!(
        page["messages"][0]["body"], "oh ****",
        "and so does history"
    );
    // Backend-granted room from the connect hook works like a joined one.
    assert_eq!(
        alice.send("announcements", json!("hello")).await["type"],
        "ok"
    );
    drop(bob);
    // Notifications arrive after the fact, in order.
    let until = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = backend.events().await;
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
        if kinds.contains(&"disconnected") && kinds.iter().filter(|k| **k == "message").count() >= 2
        {
            break events;
        }
        assert!(Instant::now() < until, "events so far: {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = events
        .iter()
        .find(|e| e["kind"] == "message" && e["room"] == "team:blue")
        .expect("message event");
    assert_eq!(
        (message["body"].clone(), message["from"].clone()),
        (json!("oh ****"), json!("alice"))
    );
    assert!(events
        .iter()
        .any(|e| e["kind"] == "connected" && e["user"] == "alice"));
    assert_eq!(
        gw.metric("chatgateway_hook_calls_total{hook=\"join\",outcome=\"denied\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// The backend answers after an hour, so any answer the client reads is the failure
/// policy's, given when the hook timed out: no clock in the assertion (the client's own
/// wait, `e2e::client::WAIT`, is what fails the test if the gateway waited for the backend).
async fn a_slow_backend_gets_the_failure_policy_within_the_hook_timeout() {
    let backend = Backend::start(3_600_000);
    let timeout = Duration::from_millis(300);
    let refuse = hooked(&backend, FailurePolicy::Refuse, timeout, false).await;
    let mut c = refuse.connect("carol").await;
    let r = c.request(json!({"type": "join", "room": "team:x"})).await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(
        refuse
            .metric("chatgateway_hook_calls_total{hook=\"join\",outcome=\"timeout\"}")
            .await
            >= 1.0
    );
    let allow = hooked(&backend, FailurePolicy::Allow, timeout, false).await;
    let mut d = allow.connect("dave").await;
    assert_eq!(
        d.request(json!({"type": "join", "room": "team:x"})).await["type"],
        "ok"
    );
}

/// A connection holding `limits.roomsPerConnection` rooms asks the backend about none
/// more, by `join` or by `resume` (whose positions are bounded by the rooms a connection
/// holds): before, a resume naming thousands of rooms asked the join hook about each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_connection_asks_the_backend_about_no_room_more() {
    let backend = Backend::start(0);
    let mut c = hooked_config(
        &backend,
        FailurePolicy::Refuse,
        Duration::from_secs(2),
        false,
    );
    c.limits.rooms_per_connection = 1;
    let gw = TestGateway::start(c).await;
    // A token of an earlier connection (a connection's own is `bad_request`).
    let token = gw.connect("erin").await.resume_token();
    let mut erin = gw.connect("erin").await;
    erin.join("lobby").await;
    let r = erin
        .request(json!({"type": "join", "room": "team:x"}))
        .await;
    assert_eq!(r["code"], "too_many_rooms", "{r}");
    let positions = json!({"team:a": 0, "team:b": 0});
    let r = erin
        .request(json!({"type": "resume", "resume_token": token, "positions": positions}))
        .await;
    assert_eq!(r["rooms"]["team:a"]["error"], "too_many_rooms", "{r}");
    let three = json!({"team:a": 0, "team:b": 0, "team:c": 0});
    let r = erin
        .request(json!({"type": "resume", "resume_token": token, "positions": three}))
        .await;
    assert_eq!(r["code"], "bad_request", "{r}");
    for outcome in ["allowed", "denied"] {
        let calls = format!("chatgateway_hook_calls_total{{hook=\"join\",outcome=\"{outcome}\"}}");
        assert_eq!(gw.sample(&calls).await, None, "{outcome}");
    }
}

/// A dead backend fails every hook call, each client's at once. Each failure was a line in
/// the log (about 200 bytes, and more CPU than the failed call itself); now a hook logs one
/// line a period, with the count of those left out, while its metric counts every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_one_log_line_not_one_per_call() {
    let dead = format!("http://127.0.0.1:{}/send", e2e::process::free_port());
    let gw = e2e::process::GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_HOOKS__SEND__URL", &dead),
        ("CHATGW_HOOKS__SEND__ON_FAILURE", "allow"),
    ]);
    gw.wait_ready(200, Duration::from_secs(30));
    let mut alice = Client::connect(&gw.ws_url("user=alice"))
        .await
        .expect("alice");
    alice.join("r").await;
    for i in 0..20 {
        assert_eq!(alice.send("r", json!(i)).await["type"], "ok", "allowed");
    }
    let failed: f64 = ["unavailable", "circuit_open"]
        .iter()
        .filter_map(|o| {
            gw.sample(&format!(
                "chatgateway_hook_calls_total{{hook=\"send\",outcome=\"{o}\"}}"
            ))
        })
        .sum();
    assert_eq!(failed, 20.0, "every call counted");
    let log = gw.log_tail();
    let lines = log.matches("hook failed").count();
    assert!(
        (1..3).contains(&lines),
        "{lines} lines for 20 failures:\n{log}"
    );
}

/// A connect hook naming a room no connection can join fails it for every connection: each
/// client hears it (an error frame naming the room), the log has one line a period (with
/// the count of those left out), not one per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_hooks_room_failing_every_connection_is_one_log_line() {
    let backend = Backend::start(0);
    let connect = backend.hook("/connect").url;
    // "announcements", the room the backend names, is longer than this.
    let gw = e2e::process::GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_HOOKS__CONNECT__URL", &connect),
        ("CHATGW_LIMITS__MAX_ROOM_NAME", "8"),
    ]);
    gw.wait_ready(200, Duration::from_secs(30));
    for i in 0..20 {
        let mut c = Client::connect(&gw.ws_url(&format!("user=u{i}")))
            .await
            .expect("connects");
        let e = c.next_of("error").await;
        assert_eq!(e["code"], "invalid_room", "{e}");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("announcements: ")),
            "{e}"
        );
    }
    let log = gw.log_tail();
    let lines = log.matches("connect hook room not joined").count();
    assert!(
        (1..3).contains(&lines),
        "{lines} lines for 20 connections:\n{log}"
    );
}
