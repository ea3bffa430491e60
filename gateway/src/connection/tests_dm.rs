//! Who may send a direct message to whom: the `user:` namespace's `dm` rule, against an
//! engine whose presence lookups can fail.

use super::tests::*;
use super::tests_faulty::Faulty;
use crate::config::{DmPolicy, NamespaceConfig};
use serde_json::json;

/// `dm: sharedRoom` asks every joined room with presence, and the first that has the
/// recipient allows the DM: a room whose lookup failed refuses it only when no other
/// room has them (`unavailable`: the client may try again), and a recipient no room has
/// is `forbidden`.
#[tokio::test]
async fn shared_room_asks_every_room_and_one_failed_lookup_does_not_decide() {
    let mut c = config();
    c.namespaces = vec![NamespaceConfig {
        dm: DmPolicy::SharedRoom,
        ..NamespaceConfig::inbox()
    }];
    let (node, faulty) = Faulty::node(c);
    let mut alice = Harness::on(node.clone(), "alice").await;
    let mut bob = Harness::on(node.clone(), "bob").await;
    for (id, room) in [(1, "a"), (2, "b")] {
        alice
            .cmd(json!({"type": "join", "id": id, "room": room}))
            .await;
        assert_eq!(alice.reply_of(id)["type"], "ok");
    }
    bob.cmd(json!({"type": "join", "id": 1, "room": "b"})).await;
    assert_eq!(bob.reply_of(1)["type"], "ok");
    alice.drain();

    faulty.fail_presence_of(Some("a"));
    let dm = |id: u64, to: &str| json!({"type": "send", "id": id, "room": to, "body": "hi"});
    alice.cmd(dm(3, "user:bob")).await;
    assert_eq!(alice.reply_of(3)["type"], "ok", "room b has bob");
    alice.cmd(dm(4, "user:carol")).await;
    assert_eq!(error_code(&alice.reply_of(4)), "unavailable");
    faulty.fail_presence_of(None);
    alice.cmd(dm(5, "user:carol")).await;
    assert_eq!(error_code(&alice.reply_of(5)), "forbidden");
}
