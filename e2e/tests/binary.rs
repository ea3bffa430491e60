//! The `chat-gateway` binary: flags, config printing, serving, and shutdown on SIGTERM.

use e2e::process::{workspace_bin, GatewayProcess};
use e2e::Client;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

#[test]
fn print_config_shows_every_default_and_applies_overrides() {
    let out = Command::new(workspace_bin("chat-gateway"))
        .args(["--print-config", "--listen", "127.0.0.1:9999"])
        .env("CHATGW_AUTH__MODE", "insecure")
        .env("CHATGW_LIMITS__ROOMS_PER_CONNECTION", "7")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let printed = chat_gateway::config::Config::from_yaml(&text).expect("printed config parses");
    assert_eq!(printed.limits.rooms_per_connection, 7);
    assert_eq!(printed.server.listen.to_string(), "127.0.0.1:9999");
    for key in [
        "maxFrameBytes: 65536",
        "interval: 25s",
        "messageRate: 20",
        "outboundQueueFrames: 1024",
        "mode: insecure",
    ] {
        assert!(text.contains(key), "missing {key} in:\n{text}");
    }
}

#[test]
fn bad_config_exits_2_with_a_clear_message() {
    let out = Command::new(workspace_bin("chat-gateway"))
        .arg("--print-config")
        .env("CHATGW_LIMITS__MAX_FRAME_BYTE", "1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("maxFrameByte"), "{err}");
    // jwt mode (the default) without a key refuses to start and says what to set.
    let out = Command::new(workspace_bin("chat-gateway"))
        .arg("--print-config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.jwt.secret"));
}

#[test]
fn kubernetes_service_link_variables_do_not_stop_the_gateway() {
    // A Service named `chatgw-redis` in the pod's namespace injects these.
    let out = Command::new(workspace_bin("chat-gateway"))
        .arg("--print-config")
        .env("CHATGW_AUTH__MODE", "insecure")
        .env("CHATGW_REDIS_PORT", "tcp://10.0.0.1:6379")
        .env("CHATGW_REDIS_PORT_6379_TCP_ADDR", "10.0.0.1")
        .env("CHATGW_REDIS_SERVICE_HOST", "10.0.0.1")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = chat_gateway::config::Config::from_yaml(&String::from_utf8_lossy(&out.stdout))
        .expect("printed config parses");
    assert_eq!(printed.redis, chat_gateway::config::RedisConfig::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_chat_and_drains_on_sigterm() {
    let mut gw = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_DRAIN__ACCEPT_GRACE", "0s"),
    ]);
    let mut a = Client::connect(&gw.ws_url("user=a"))
        .await
        .expect("connect a");
    let mut b = Client::connect(&gw.ws_url("user=b"))
        .await
        .expect("connect b");
    a.join("x").await;
    b.join("x").await;
    assert_eq!(a.send("x", json!("via the binary")).await["type"], "ok");
    assert_eq!(b.next_msg().await["body"], "via the binary");
    gw.signal("TERM");
    let goaway = a.next_of("goaway").await;
    assert_eq!(goaway["reason"], "draining");
    assert!(goaway["reconnect_after_ms"]
        .as_u64()
        .is_some_and(|ms| ms <= 2000));
    assert_eq!(a.expect_close().await.map(|c| c.0), Some(1012));
    assert_eq!(
        gw.wait_exit(Duration::from_secs(15)),
        Some(0),
        "exits cleanly after SIGTERM"
    );
}
