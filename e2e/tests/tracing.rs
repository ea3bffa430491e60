//! OTLP traces across pods: a message sent on process A and delivered on process B is one
//! trace (send span on A, deliver span on B as its child), exported to a real OTLP/gRPC
//! receiver; a client's own traceparent is honoured; without an endpoint nothing connects.

use e2e::otlp::Receiver;
use e2e::process::GatewayProcess;
use e2e::redis::RedisServer;
use e2e::Client;
use serde_json::json;
use std::time::Duration;

fn traced(redis: &RedisServer, otlp: &str, name: &str, prefix: &str) -> GatewayProcess {
    let url = redis.url();
    let p = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_ENGINE", "redis"),
        ("CHATGW_REDIS__URL", &url),
        ("CHATGW_REDIS__KEY_PREFIX", prefix),
        ("CHATGW_NODE__ID", name),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        ("OTEL_SERVICE_NAME", name),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    p.wait_ready(200, Duration::from_secs(20));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_two_processes() {
    let otlp = Receiver::start().await;
    let redis = RedisServer::start();
    let prefix = format!("tr{:08x}", rand::random::<u32>());
    let a = traced(&redis, &otlp.endpoint(), "gw-a", &prefix);
    let b = traced(&redis, &otlp.endpoint(), "gw-b", &prefix);
    let mut alice = Client::connect(&a.ws_url("user=alice"))
        .await
        .expect("alice");
    let mut bob = Client::connect(&b.ws_url("user=bob")).await.expect("bob");
    alice.join("traced").await;
    bob.join("traced").await;

    let ack = alice.send("traced", json!("first")).await;
    assert_eq!(ack["type"], "ok", "{ack}");
    let got = bob.next_msg().await;
    let tp = got["traceparent"]
        .as_str()
        .expect("the message carries its trace context");
    let trace_id = tp.split('-').nth(1).expect("trace id").to_string();
    let send_span_id = tp.split('-').nth(2).expect("span id").to_string();

    let spans = otlp
        .wait_for(
            Duration::from_secs(20),
            "send on gw-a and deliver on gw-b",
            |s| {
                s.iter().any(|x| x.name == "send" && x.trace_id == trace_id)
                    && s.iter().any(|x| {
                        x.name == "deliver" && x.service == "gw-b" && x.trace_id == trace_id
                    })
            },
        )
        .await;
    let send = spans
        .iter()
        .find(|x| x.name == "send" && x.trace_id == trace_id)
        .expect("send");
    assert_eq!(send.service, "gw-a");
    assert_eq!(send.span_id, send_span_id);
    assert_eq!(send.attr("room"), Some("traced"));
    let deliver = spans
        .iter()
        .find(|x| x.name == "deliver" && x.service == "gw-b" && x.trace_id == trace_id)
        .expect("deliver");
    assert_eq!(
        deliver.parent_span_id, send.span_id,
        "deliver on B is a child of send on A"
    );
    assert!(spans
        .iter()
        .any(|x| x.name == "connect" && x.attr("user") == Some("bob")));

    // A client that brings its own trace context gets its send joined to that trace.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = alice
        .request(json!({"type": "send", "room": "traced", "body": "second",
                        "traceparent": format!("00-{client_trace}-{client_span}-01")}))
        .await;
    assert_eq!(r["type"], "ok");
    let spans = otlp
        .wait_for(
            Duration::from_secs(20),
            "send and deliver in the client's trace",
            |s| {
                s.iter()
                    .any(|x| x.name == "send" && x.trace_id == client_trace)
                    && s.iter().any(|x| {
                        x.name == "deliver" && x.service == "gw-b" && x.trace_id == client_trace
                    })
            },
        )
        .await;
    let send = spans
        .iter()
        .find(|x| x.name == "send" && x.trace_id == client_trace)
        .expect("send");
    assert_eq!(send.parent_span_id, client_span);
    otlp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_the_last_moments_are_flushed_on_shutdown() {
    let otlp = Receiver::start().await;
    let redis = RedisServer::start();
    let url = redis.url();
    // A long batch delay: only the flush at exit can deliver the span in time.
    let mut a = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_ENGINE", "redis"),
        ("CHATGW_REDIS__URL", &url),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint()),
        ("OTEL_SERVICE_NAME", "gw-flush"),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ]);
    a.wait_ready(200, Duration::from_secs(20));
    let mut c = Client::connect(&a.ws_url("user=late"))
        .await
        .expect("connect");
    c.join("late").await;
    assert_eq!(
        c.send("late", json!("just before exit")).await["type"],
        "ok"
    );
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(20)), Some(0));
    otlp.wait_for(
        Duration::from_secs(5),
        "the send span flushed at exit",
        |s| {
            s.iter()
                .any(|x| x.name == "send" && x.service == "gw-flush")
        },
    )
    .await;
    otlp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_connects_anywhere() {
    // The default OTLP/gRPC endpoint is localhost:4317: listen there and count connections.
    let listener = std::net::TcpListener::bind("127.0.0.1:4317")
        .expect("port 4317 must be free for this test (the OTLP default)");
    listener.set_nonblocking(true).expect("nonblocking");
    let mut gw = GatewayProcess::start(&[("CHATGW_AUTH__MODE", "insecure")]);
    let mut c = Client::connect(&gw.ws_url("user=quiet"))
        .await
        .expect("connect");
    c.join("q").await;
    for i in 0..5 {
        assert_eq!(c.send("q", json!(i)).await["type"], "ok");
    }
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("something connected to the OTLP default port from {peer}"),
        Err(e) => panic!("accept: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_keep_flowing_during_a_drain_until_exit() {
    // The receiver stands in for a collector sidecar, which outlives the gateway container.
    let otlp = Receiver::start().await;
    let mut gw = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_DRAIN__ACCEPT_GRACE", "300ms"),
        ("CHATGW_DRAIN__EVICT_RATE", "4"),
        ("CHATGW_DRAIN__RECONNECT_JITTER", "0s"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint()),
        ("OTEL_SERVICE_NAME", "gw-drain"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = Client::connect(&gw.ws_url(&format!("user=d{i}")))
            .await
            .expect("connect");
        c.join("drain").await;
        clients.push(c);
    }
    gw.signal("TERM");
    // Each client keeps talking until its goaway: those sends happen during the drain.
    let mut sent_during_drain = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg_id = format!("late-{i}");
        let r = c
            .request(json!({"type": "send", "room": "drain", "msg_id": msg_id, "body": i}))
            .await;
        assert_eq!(r["type"], "ok", "{r}");
        sent_during_drain.push(msg_id);
    }
    assert_eq!(
        gw.wait_exit(Duration::from_secs(20)),
        Some(0),
        "the drain ends and the process exits"
    );
    let spans = otlp
        .wait_for(
            Duration::from_secs(10),
            "the send spans of the drained connections",
            |s| {
                sent_during_drain.iter().all(|id| {
                    s.iter()
                        .any(|x| x.name == "send" && x.attr("msg_id") == Some(id.as_str()))
                })
            },
        )
        .await;
    assert!(spans.iter().all(|s| s.service == "gw-drain"));
    otlp.stop();
}

/// The backend's hooks are part of the traces they decide: the connect hook's span is a
/// child of the `connect` span, the send hook's a child of the `send` span (in the
/// client's trace when it brought one). Before, the connect hook started a trace of its
/// own and the send hook ran before the `send` span existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_calls_are_children_of_the_spans_they_decide() {
    let otlp = Receiver::start().await;
    let backend_addr = std::net::SocketAddr::from(([127, 0, 0, 1], e2e::process::free_port()));
    let backend = std::process::Command::new(env!("CARGO_BIN_EXE_chat-backend"))
        .args(["--listen", &backend_addr.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("chat-backend starts");
    // Killed when the test ends, a failed assertion included.
    let _backend = KillOnDrop(backend);
    let hook = |path: &str| format!("http://{backend_addr}{path}");
    let (connect, send) = (hook("/connect"), hook("/send"));
    let gw = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_HOOKS__CONNECT__URL", &connect),
        ("CHATGW_HOOKS__SEND__URL", &send),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint()),
        ("OTEL_SERVICE_NAME", "gw-hooks"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    gw.wait_ready(200, Duration::from_secs(20));
    let mut carol = Client::connect(&gw.ws_url("user=carol"))
        .await
        .expect("carol");
    carol.join("hooked").await;
    let client_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = carol
        .request(json!({"type": "send", "room": "hooked", "body": "hello",
                        "traceparent": format!("00-{client_trace}-10f067aa0ba902b8-01")}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let hook_of =
        |s: &e2e::otlp::Span, which: &str| s.name == "hook" && s.attr("hook") == Some(which);
    let spans = otlp
        .wait_for(Duration::from_secs(20), "both hook spans", |s| {
            s.iter().any(|x| hook_of(x, "connect")) && s.iter().any(|x| hook_of(x, "send"))
        })
        .await;
    let connect = spans
        .iter()
        .find(|x| x.name == "connect" && x.attr("user") == Some("carol"))
        .expect("connect span");
    let connect_hook = spans.iter().find(|x| hook_of(x, "connect")).expect("hook");
    assert_eq!(
        (
            connect_hook.trace_id.as_str(),
            connect_hook.parent_span_id.as_str()
        ),
        (connect.trace_id.as_str(), connect.span_id.as_str()),
        "the connect hook in the connect span"
    );
    let send = spans
        .iter()
        .find(|x| x.name == "send" && x.trace_id == client_trace)
        .expect("send span");
    let send_hook = spans.iter().find(|x| hook_of(x, "send")).expect("hook");
    assert_eq!(send_hook.trace_id, client_trace, "in the client's trace");
    assert_eq!(send_hook.parent_span_id, send.span_id, "a child of send");
    otlp.stop();
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
