//! Bad input and limits: each gets its documented error or close code, the server stays
//! up, and other clients keep chatting.

use e2e::{test_config, TestGateway};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::{
    coding::{Data, OpCode},
    Frame,
};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_1009() {
    let mut c = test_config();
    c.limits.max_frame_bytes = 4096;
    c.limits.outbound_queue_bytes = 65536;
    let gw = TestGateway::start(c).await;
    let mut bad = gw.connect("big").await;
    let huge = json!({"type": "send", "room": "r", "body": "x".repeat(10_000), "id": 1});
    let _ = bad.send_raw(Message::text(huge.to_string())).await;
    assert_eq!(bad.expect_close().await.map(|c| c.0), Some(1009));
    gw.bystanders_still_chat().await;
    assert_eq!(
        gw.metric("chatgateway_drops_total{reason=\"oversize\"}")
            .await,
        1.0
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_close_1003() {
    let gw = TestGateway::default().await;
    let mut bad = gw.connect("bin").await;
    let _ = bad
        .send_raw(Message::binary(vec![0xde, 0xad, 0xbe, 0xef, 0, 1, 2]))
        .await;
    assert_eq!(bad.expect_close().await.map(|c| c.0), Some(1003));
    gw.bystanders_still_chat().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_1007() {
    let gw = TestGateway::default().await;
    let mut bad = gw.connect("utf").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    let _ = bad.send_raw(Message::Frame(frame)).await;
    assert_eq!(bad.expect_close().await.map(|c| c.0), Some(1007));
    gw.bystanders_still_chat().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_deep_nesting_and_unknown_commands_get_error_frames() {
    let gw = TestGateway::default().await;
    let mut c = gw.connect("sloppy").await;
    c.join("r").await;
    let cases = [
        ("{not json".to_string(), "bad_request"),
        ("[1,2,3]".to_string(), "bad_request"),
        (r#"{"type":"dance","id":5}"#.to_string(), "unknown_command"),
        (
            r#"{"type":"send","id":6,"room":"r"}"#.to_string(),
            "bad_request",
        ),
        (
            r#"{"type":"join","id":7,"room":"bad room!"}"#.to_string(),
            "invalid_room",
        ),
        (
            format!(
                r#"{{"type":"send","id":8,"room":"r","body":{}{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
            "bad_request",
        ),
        (
            format!(
                r#"{{"type":"send","id":9,"room":"r","body":{}1{}}}"#,
                "{\"a\":".repeat(10_000),
                "}".repeat(10_000)
            ),
            "bad_request",
        ),
    ];
    for (text, code) in &cases {
        c.send_raw(Message::text(text.clone())).await.expect("send");
        let f = c.next_of("error").await;
        assert_eq!(f["code"], *code, "{}: {f}", &text[..text.len().min(60)]);
    }
    // Errors reference the command id when it could be read.
    let f = {
        c.send_raw(Message::text(r#"{"type":"dance","id":"abc"}"#))
            .await
            .expect("send");
        c.next_of("error").await
    };
    assert_eq!(f["ref"], "abc");
    // After errors, a good command still works (and resets the error streak).
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "ok");
    gw.bystanders_still_chat().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_errors_in_a_row_closes_1008() {
    let gw = TestGateway::default().await;
    let mut c = gw.connect("noisy").await;
    for _ in 0..20 {
        if c.send_raw(Message::text("nonsense")).await.is_err() {
            break;
        }
    }
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(1008));
    gw.bystanders_still_chat().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_above_the_rate_is_rate_limited_then_closed() {
    let mut cfg = test_config();
    cfg.limits.message_rate = 5.0;
    cfg.limits.message_burst = 10;
    cfg.limits.max_errors_in_row = 30;
    let gw = TestGateway::start(cfg).await;
    let mut c = gw.connect("flood").await;
    let mut ids = Vec::new();
    for _ in 0..15 {
        ids.push(c.send_cmd(json!({"type": "ping"})).await);
    }
    let mut codes = Vec::new();
    for id in ids {
        let r = c.reply(id).await;
        codes.push(r["code"].as_str().unwrap_or("ok").to_string());
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "ok").count(),
        10,
        "the burst passes: {codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| *c == "rate_limited").count(),
        5,
        "{codes:?}"
    );
    // Keep flooding: repeated abuse ends with a policy close.
    for _ in 0..100 {
        if c.send_raw(Message::text(r#"{"type":"ping","id":0}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.expect_close().await.map(|c| c.0), Some(1008));
    assert!(
        gw.metric("chatgateway_drops_total{reason=\"rate_limited\"}")
            .await
            >= 30.0
    );
    gw.bystanders_still_chat().await;
    gw.stop().await;
}

/// `limits.userMessageRate` is one budget for all of a user's connections on the pod, so
/// opening more of them (up to `connectionsPerUser`) does not multiply the user's rate;
/// it outlives the connections, so reconnecting does not refill it either. A connection
/// over its own `messageRate` is refused before it spends the user's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_connections_share_one_command_rate() {
    let mut cfg = test_config();
    // Next to no refill during the test: the bursts are the whole budgets.
    (cfg.limits.message_rate, cfg.limits.message_burst) = (0.001, 7);
    (cfg.limits.user_message_rate, cfg.limits.user_message_burst) = (0.001, 10);
    let gw = TestGateway::start(cfg).await;
    let mut answers = Vec::new();
    for pings in [8, 5, 1] {
        let mut c = gw.connect("multi").await;
        for _ in 0..pings {
            let r = c.request(json!({"type": "ping"})).await;
            let code = r["code"].as_str().unwrap_or("ok");
            let user = r["message"].as_str().is_some_and(|m| m.contains("user"));
            answers.push(match (code, user) {
                ("rate_limited", true) => "user",
                ("rate_limited", false) => "connection",
                ("ok", _) => "ok",
                _ => panic!("{r}"),
            });
        }
    }
    let expected = [
        ["ok"; 7].as_slice(),
        &["connection"],
        &["ok"; 3],
        &["user"; 3],
    ]
    .concat();
    assert_eq!(answers, expected);
    let drops = |reason: &str| format!("chatgateway_drops_total{{reason=\"{reason}\"}}");
    assert_eq!(gw.metric(&drops("rate_limited")).await, 1.0);
    assert_eq!(gw.metric(&drops("user_rate_limited")).await, 3.0);
    gw.bystanders_still_chat().await;
    gw.stop().await;
}

/// Pings, and the empty fragments of a message that never ends, are frames the message
/// rate never sees (tungstenite answers and joins them before a command exists): a flood
/// of either closes with 1008 `too many frames`, while pings within the budget and
/// commands (whole text messages, left to the message rate) go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_fragment_floods_close_1008_too_many_frames() {
    let mut cfg = test_config();
    cfg.limits.frame_rate = 10.0;
    cfg.limits.frame_burst = 100;
    (cfg.limits.message_rate, cfg.limits.message_burst) = (1000.0, 1000);
    let gw = TestGateway::start(cfg).await;
    let too_many_frames = Some((1008, "too many frames".to_string()));

    let mut pinger = gw.connect("pinger").await;
    for _ in 0..1000 {
        if pinger.send_raw(Message::Ping("p".into())).await.is_err() {
            break;
        }
    }
    assert_eq!(pinger.expect_close().await, too_many_frames);

    let mut fragments = gw.connect("fragmenter").await;
    for frame in e2e::client::endless_message(1000) {
        if fragments.send_raw(frame).await.is_err() {
            break;
        }
    }
    assert_eq!(fragments.expect_close().await, too_many_frames);

    // Fifty pings, then commands past the frame burst: all within their budgets.
    let mut calm = gw.connect("calm").await;
    for _ in 0..50 {
        calm.send_raw(Message::Ping("p".into()))
            .await
            .expect("ping");
    }
    for _ in 0..120 {
        let r = calm.request(json!({"type": "ping"})).await;
        assert_eq!(r["type"], "ok", "{r}");
    }
    gw.bystanders_still_chat().await;
    let closed = "chatgateway_connections_closed_total{reason=\"too many frames\"}";
    assert_eq!(gw.metric(closed).await, 2.0);
    gw.stop().await;
}

/// A client refused for what it sent may still be sending: a socket closed with bytes
/// unread answers with a reset, which can reach the client before it reads its close
/// frame. So the gateway reads and drops what follows for up to a second, and each refused
/// client below, writing on after the refusal, reads its close code and then an orderly
/// end of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_that_writes_on_reads_its_close_and_a_clean_end() {
    use e2e::rawws::{assert_refused, masked_header, refused_frames};
    let mut cfg = test_config();
    cfg.limits.max_frame_bytes = 4096;
    (cfg.limits.frame_rate, cfg.limits.frame_burst) = (10.0, 100);
    let gw = TestGateway::start(cfg).await;
    let mut cases = refused_frames();
    let binary = [&masked_header(0x2, 2)[..], b"hi"].concat();
    cases.push(("binary", binary, 1003));
    assert_refused(gw.gateway.addr, |user| format!("/ws?user={user}"), cases).await;
    gw.bystanders_still_chat().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_rooms() {
    let mut cfg = test_config();
    cfg.limits.rooms_per_connection = 3;
    let gw = TestGateway::start(cfg).await;
    let mut c = gw.connect("joiner").await;
    for r in ["a", "b", "c"] {
        c.join(r).await;
    }
    let r = c.request(json!({"type": "join", "room": "d"})).await;
    assert_eq!(r["code"], "too_many_rooms");
    c.request(json!({"type": "leave", "room": "a"})).await;
    c.join("d").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_1013_and_its_queue_stays_bounded() {
    let mut cfg = test_config();
    cfg.limits.message_rate = 100_000.0;
    cfg.limits.user_message_rate = 0.0;
    cfg.limits.message_burst = 100_000;
    cfg.limits.outbound_queue_frames = 64;
    cfg.limits.outbound_queue_bytes = 256 * 1024;
    let queue_limit = cfg.limits.outbound_queue_bytes;
    let gw = TestGateway::start(cfg).await;
    let mut slow = gw.connect("sloth").await;
    slow.join("firehose").await;
    let mut fast = gw.connect("cheetah").await;
    fast.join("firehose").await;
    let mut sender = gw.connect("sender").await;
    sender.join("firehose").await;
    // The slow client reads one frame every 20 ms, far slower than the room fills: its
    // queue overflows. Because it keeps reading, the socket drains and the close frame
    // can reach it (a client that never reads again gets the TCP close only).
    let slow_reader = tokio::spawn(async move {
        let mut msgs = 0;
        loop {
            match slow.next_raw().await {
                Some(Message::Text(_)) => msgs += 1,
                Some(Message::Close(frame)) => {
                    return (
                        msgs,
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    )
                }
                Some(_) => {}
                None => panic!("the slow consumer's socket ended without a close frame"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let body = "y".repeat(30_000);
    let mut sent = 0;
    while gw
        .sample("chatgateway_connections_closed_total{reason=\"slow consumer\"}")
        .await
        .is_none()
    {
        for _ in 0..50 {
            let r = sender.send("firehose", json!(body)).await;
            assert_eq!(r["type"], "ok");
            sent += 1;
        }
        // The fast reader keeps up.
        for _ in 0..50 {
            fast.next_msg().await;
        }
        assert!(
            sent < 20_000,
            "slow consumer never disconnected after {sent} messages"
        );
    }
    let (read, close) = tokio::time::timeout(Duration::from_secs(60), slow_reader)
        .await
        .expect("the slow consumer reaches its close frame")
        .expect("slow reader");
    assert_eq!(
        close,
        Some((1013, "slow consumer".to_string())),
        "after {read} messages"
    );
    assert!(read < sent, "it did not get everything: {read} of {sent}");
    assert!(
        gw.gateway.node.queue_high_water() <= queue_limit,
        "queue exceeded its byte bound"
    );
    assert!(gw.gateway.node.queue_high_water() > 0);
    assert_eq!(
        gw.metric("chatgateway_connections_closed_total{reason=\"slow consumer\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("chatgateway_drops_total{reason=\"slow_consumer\"}")
            .await,
        1.0
    );
    gw.bystanders_still_chat().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pings_and_silent_clients_are_closed() {
    let mut cfg = test_config();
    cfg.heartbeat.interval = Duration::from_millis(200);
    let gw = TestGateway::start(cfg).await;
    // A reading client answers pings (tungstenite replies automatically) and stays.
    let mut alive = gw.connect("alive").await;
    let frames = alive.raw_for(Duration::from_millis(1500)).await;
    let pings: Vec<std::time::Instant> = frames
        .iter()
        .filter(|(_, m)| matches!(m, Message::Ping(_)))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.len() >= 3,
        "expected pings every 200ms, got {}",
        pings.len()
    );
    for w in pings.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(150),
            "pings closer than the interval"
        );
    }
    assert_eq!(
        alive.request(json!({"type": "ping"})).await["type"],
        "ok",
        "still connected"
    );
    drop(alive);
    // A client that never reads never answers pings: closed after two intervals.
    let mut silent = gw.connect("silent").await;
    assert_eq!(
        gw.wait_sample(
            "chatgateway_connections_closed_total{reason=\"heartbeat timeout\"}",
            1.0
        )
        .await,
        1.0
    );
    // The close frame (1001) may be lost: the silent client's late pong hits a socket the
    // server already closed, and the resulting RST discards what was still unread.
    let close = silent.expect_close().await.map(|c| c.0);
    assert!(matches!(close, Some(1001) | None), "{close:?}");
    gw.stop().await;
}
