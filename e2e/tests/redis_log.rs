//! What the pod's log says when Redis fails: Redis' own error for the operator (the client
//! reads a fixed text), and one line a period however many clients fail at once.

use e2e::fleet::wait_until;
use e2e::process::GatewayProcess;
use e2e::redis::RedisServer;
use e2e::Client;
use serde_json::json;
use std::time::Duration;

/// A gateway process on `redis` (insecure logins, key prefix `e`), ready.
fn gateway_on(redis: &RedisServer) -> GatewayProcess {
    let gw = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_ENGINE", "redis"),
        ("CHATGW_REDIS__URL", &redis.url()),
        ("CHATGW_REDIS__KEY_PREFIX", "e"),
    ]);
    gw.wait_ready(200, Duration::from_secs(30));
    gw
}

/// A Redis that answers an error (here a room's meta of the wrong type: another
/// application's key under the prefix, or a hand-made one) fails the send `internal`. The
/// client read Redis' own text (the script's hash and line); it reads a fixed one now, and
/// the pod's log has Redis' text instead, one line for a burst of failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_error_tells_the_client_a_fixed_text_and_the_log_redis_own() {
    let redis = RedisServer::start();
    let gw = gateway_on(&redis);
    let mut alice = Client::connect(&gw.ws_url("user=alice"))
        .await
        .expect("alice");
    alice.join("r").await;
    redis.command(&["SET", "e:{r}:m", "x"]).expect("SET");
    for i in 0..3 {
        let r = alice
            .request(json!({"type": "send", "room": "r", "msg_id": format!("m{i}"), "body": 1}))
            .await;
        assert_eq!(r["code"], "internal", "{r}");
        let told = r["message"].as_str().unwrap_or_default();
        assert!(told.starts_with("the redis operation failed"), "{r}");
    }
    wait_until(
        "the log names Redis' error",
        Duration::from_secs(10),
        || gw.log_tail().contains("WRONGTYPE"),
    )
    .await;
    let lines = gw.log_tail().matches("redis operation failed").count();
    assert!(
        lines < 3,
        "{lines} log lines for 3 failures:\n{}",
        gw.log_tail()
    );
    assert!(gw.metric("chatgateway_redis_errors_total") >= 3.0);
}

/// A Redis outage fails what every connection does at once: 20 connections closing
/// while Redis is down each fail to save their session, and logged a `session not saved`
/// line each (a pod with 15,000 logged 15,000). The node's gate lets one through a period;
/// the engine's own line says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_failing_in_an_outage_are_one_log_line_not_one_each() {
    let mut redis = RedisServer::start();
    let gw = gateway_on(&redis);
    let mut clients = Vec::new();
    for i in 0..20 {
        let url = gw.ws_url(&format!("user=u{i}"));
        let mut c = Client::connect(&url).await.expect("connect");
        c.join("r").await;
        clients.push(c);
    }
    redis.stop();
    drop(clients);
    let saves = |log: &str| log.matches("session not saved").count();
    wait_until("a session not saved", Duration::from_secs(20), || {
        saves(&gw.log_tail()) > 0
    })
    .await;
    // The other 19 closes are as quick: give them time to log if they would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = gw.log_tail();
    assert!(
        saves(&log) <= 2,
        "{} lines for 20 closes:\n{log}",
        saves(&log)
    );
}
