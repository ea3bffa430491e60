//! Inboxes (`user:<id>`) over real sockets against an in-process gateway: direct messages
//! to every connection of a user, kept while offline and delivered once in order, the
//! replay's wait for `resume` (the 1 s grace) and a late `resume`.

use e2e::TestGateway;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_reaches_every_connection_of_the_recipient() {
    let gw = TestGateway::default().await;
    let mut bob1 = gw.connect("bob").await;
    let mut bob2 = gw.connect("bob").await;
    let mut alice = gw.connect("alice").await;
    // Any first command ends the inbox resume window; ping keeps it explicit.
    bob1.request(json!({"type": "ping"})).await;
    bob2.request(json!({"type": "ping"})).await;
    let ack = alice.send("user:bob", json!({"text": "psst"})).await;
    assert_eq!(ack["type"], "ok", "{ack}");
    for bob in [&mut bob1, &mut bob2] {
        let m = bob.next_msg().await;
        assert_eq!(m["room"], "user:bob");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["body"]["text"], "psst");
    }
    // Another user's inbox cannot be joined or read.
    let r = alice
        .request(json!({"type": "join", "room": "user:bob"}))
        .await;
    assert_eq!(r["code"], "forbidden");
    let r = alice
        .request(json!({"type": "history", "room": "user:bob"}))
        .await;
    assert_eq!(r["code"], "forbidden");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_dms_are_kept_and_delivered_in_order_on_next_connect() {
    let gw = TestGateway::default().await;
    let mut alice = gw.connect("alice").await;
    for i in 0..5 {
        let r = alice.send("user:dave", json!({"n": i})).await;
        assert_eq!(r["type"], "ok");
    }
    let mut dave = gw.connect("dave").await;
    dave.request(json!({"type": "ping"})).await;
    let got = dave.drain_msgs(Duration::from_millis(500)).await;
    let bodies: Vec<i64> = got
        .iter()
        .map(|m| m["body"]["n"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(bodies, [0, 1, 2, 3, 4]);
    // Delivered is not read: dave's device acknowledges them.
    let last = got.last().and_then(|m| m["seq"].as_u64()).expect("seq");
    let ack = dave.request(json!({"type": "ack", "seq": last})).await;
    assert_eq!(ack["type"], "ok", "{ack}");
    drop(dave);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Acknowledged ones are not delivered again on the next connect; new ones are.
    alice.send("user:dave", json!({"n": 5})).await;
    let mut dave = gw.connect("dave").await;
    dave.request(json!({"type": "ping"})).await;
    let got = dave.drain_msgs(Duration::from_millis(500)).await;
    let bodies: Vec<i64> = got
        .iter()
        .map(|m| m["body"]["n"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(bodies, [5]);
    gw.stop().await;
}

fn bodies(msgs: &[Value]) -> Vec<i64> {
    msgs.iter()
        .map(|m| m["body"]["n"].as_i64().unwrap_or(-1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_client_gets_its_offline_dms_after_the_resume_grace() {
    let gw = TestGateway::default().await;
    let mut alice = gw.connect("alice").await;
    for i in 0..3 {
        assert_eq!(alice.send("user:pat", json!({"n": i})).await["type"], "ok");
    }
    // Pat connects and sends nothing at all: no resume comes, so after the grace (1 s)
    // the inbox is replayed from the cursor.
    let mut pat = gw.connect("pat").await;
    let got = pat.drain_msgs(Duration::from_millis(2500)).await;
    assert_eq!(bodies(&got), [0, 1, 2], "{got:?}");
    assert!(got.iter().all(|m| m["room"] == "user:pat"));
    // Live DMs follow, once.
    alice.send("user:pat", json!({"n": 3})).await;
    assert_eq!(
        bodies(&pat.drain_msgs(Duration::from_millis(300)).await),
        [3]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_resume_reports_the_inbox_not_recovered() {
    let gw = TestGateway::default().await;
    let mut alice = gw.connect("alice").await;
    let mut lee = gw.connect("lee").await;
    lee.request(json!({"type": "ping"})).await;
    alice.send("user:lee", json!({"n": 0})).await;
    let got = lee.drain_msgs(Duration::from_millis(300)).await;
    assert_eq!(bodies(&got), [0]);
    // The device has it (DMs are replayed per device until acknowledged).
    let seq = got[0]["seq"].as_u64().expect("seq");
    assert_eq!(
        lee.request(json!({"type": "ack", "seq": seq})).await["type"],
        "ok"
    );
    let token = lee.resume_token();
    drop(lee);
    tokio::time::sleep(Duration::from_millis(100)).await;
    alice.send("user:lee", json!({"n": 1})).await;

    // After another first command: the inbox was replayed from the cursor at once.
    let mut lee = gw.connect("lee").await;
    lee.request(json!({"type": "ping"})).await;
    let got = lee.drain_msgs(Duration::from_millis(300)).await;
    assert_eq!(bodies(&got), [1]);
    let seq = got[0]["seq"].as_u64().expect("seq");
    assert_eq!(
        lee.request(json!({"type": "ack", "seq": seq})).await["type"],
        "ok"
    );
    let reply = lee
        .request(json!({"type": "resume", "resume_token": token, "positions": {"user:lee": 0}}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["rooms"]["user:lee"]["recovered"], false, "{reply}");
    assert!(
        lee.drain_msgs(Duration::from_millis(300)).await.is_empty(),
        "nothing is replayed twice"
    );
    let token = lee.resume_token();
    drop(lee);
    tokio::time::sleep(Duration::from_millis(100)).await;
    alice.send("user:lee", json!({"n": 2})).await;

    // After the grace, with no command at all.
    let mut lee = gw.connect("lee").await;
    assert_eq!(
        bodies(&lee.drain_msgs(Duration::from_millis(2000)).await),
        [2]
    );
    let reply = lee
        .request(json!({"type": "resume", "resume_token": token, "positions": {"user:lee": 1}}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["rooms"]["user:lee"]["recovered"], false, "{reply}");
    assert!(lee.drain_msgs(Duration::from_millis(300)).await.is_empty());
    gw.stop().await;
}
