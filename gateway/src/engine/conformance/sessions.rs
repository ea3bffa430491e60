//! Conformance checks of the session store: a session is resumed once, by its own user,
//! within its time; and the users' inbox cursors.

use super::{config, Factory};
use crate::engine::{SaveOutcome, SessionRecord, StoredGrant, TakenSession};
use crate::hub::Hub;
use crate::protocol::StreamPosition;
use std::sync::Arc;
use std::time::Duration;

fn record(user: &str) -> SessionRecord {
    SessionRecord {
        user: user.into(),
        node: "n1".into(),
        rooms: [("lobby".to_string(), StreamPosition::new("e", 4))].into(),
        connected_at: 1,
        last_seen: 2,
        grants: [(
            "lobby".to_string(),
            StoredGrant {
                send: false,
                expires_at: 99,
                kid: Some("k1".into()),
            },
        )]
        .into(),
        // Round-trips like every field (a resume acts on it).
        open: true,
    }
}

pub(super) async fn take_once_and_expire(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    let rec = record("alice");
    engine.save_session("tok1", &rec).await.expect("save");
    let take = |token, user| engine.take_session(token, user);
    let other = take("tok1", "bob").await.expect("take");
    assert_eq!(
        other,
        TakenSession::OtherUsers,
        "another user's is not taken"
    );
    let taken = take("tok1", "alice").await.expect("take");
    assert_eq!(taken, TakenSession::Taken(rec.clone()));
    let again = take("tok1", "alice").await.expect("take");
    assert_eq!(again, TakenSession::Missing, "taken once");

    // Sessions live `sessions.resumeTtl` (300 ms here) from their save; another user's
    // attempt does not extend that (it may come after the expiry on a slow machine).
    engine.save_session("tok2", &rec).await.expect("save");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = take("tok2", "bob").await.expect("take");
    assert_ne!(other, TakenSession::Taken(rec.clone()));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let expired = take("tok2", "alice").await.expect("take");
    assert_eq!(expired, TakenSession::Missing, "expired on its own time");
    let unknown = take("unknown", "alice").await.expect("take");
    assert_eq!(unknown, TakenSession::Missing);
}

/// A connection that ends after its client resumed elsewhere (a half-open socket the
/// heartbeat only gives up on later) saves its session under a token a resume took: that
/// save must not make the token good again, and the mark saying so lasts no longer than
/// the session would have (`sessions.resumeTtl`, 300 ms here). A drop leaves no mark.
pub(super) async fn a_taken_token_is_not_saved_again(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub, &config()).await;
    let rec = record("alice");
    let save = |token| engine.save_session(token, &rec);
    assert_eq!(save("tok3").await.expect("save"), SaveOutcome::Stored);
    let taken = engine.take_session("tok3", "alice").await.expect("take");
    assert_eq!(taken, TakenSession::Taken(rec.clone()));
    assert_eq!(save("tok3").await.expect("save"), SaveOutcome::Taken);
    let marked = tokio::time::Instant::now();
    for user in ["alice", "bob"] {
        let again = engine.take_session("tok3", user).await.expect("take");
        assert_eq!(again, TakenSession::Missing, "{user}: resumed once");
    }
    // A drop (an ended session past `sessions.keptPerUser`) leaves nothing behind: not
    // another user's, and no mark.
    assert_eq!(save("tok4").await.expect("save"), SaveOutcome::Stored);
    engine.drop_session("tok4", "bob").await.expect("drop");
    assert_eq!(
        engine.peek_session_for_test("tok4").await,
        Some(rec.clone())
    );
    engine.drop_session("tok4", "alice").await.expect("drop");
    assert_eq!(engine.peek_session_for_test("tok4").await, None);
    assert_eq!(save("tok4").await.expect("save"), SaveOutcome::Stored);

    // The mark lives `resumeTtl` (300 ms) from the last save over it: saves 150 ms apart
    // keep meeting it past the first 300 ms. Judged only where this machine kept a save
    // under 250 ms after the one before; one that came too late and found the mark gone
    // stored the record, which ends the check.
    let mut last = marked;
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let outcome = save("tok3").await.expect("save");
        if last.elapsed() < Duration::from_millis(250) {
            assert_eq!(outcome, SaveOutcome::Taken, "save {i} over the mark");
        } else if outcome != SaveOutcome::Taken {
            break;
        }
        last = tokio::time::Instant::now();
    }

    // Past the session's own expiry (a slow machine only sleeps longer) the mark is gone:
    // the token is stored like any other.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(save("tok3").await.expect("save"), SaveOutcome::Stored);
    let later = engine.take_session("tok3", "alice").await.expect("take");
    assert_eq!(later, TakenSession::Taken(rec.clone()));
}

pub(super) async fn inbox_cursor_only_moves_forward(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    assert_eq!(engine.inbox_cursor("zed").await.expect("cursor"), None);
    let at = |e: &str, s| StreamPosition::new(e, s);
    engine.ack_inbox("zed", &at("e1", 5)).await.expect("ack");
    engine.ack_inbox("zed", &at("e1", 3)).await.expect("ack");
    assert_eq!(
        engine.inbox_cursor("zed").await.expect("cursor"),
        Some(at("e1", 5))
    );
    engine.ack_inbox("zed", &at("e2", 1)).await.expect("ack");
    assert_eq!(
        engine.inbox_cursor("zed").await.expect("cursor"),
        Some(at("e2", 1)),
        "a new epoch replaces the cursor"
    );
}

/// A cursor is forgotten 2 × the inbox's max age after its last ack: the `user:`
/// namespace's retention when it sets one, not `inbox:`'s (a cursor kept shorter than
/// the messages it skips would replay acknowledged direct messages).
pub(super) async fn inbox_cursor_lives_twice_the_inbox_namespaces_max_age(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let mut c = config();
    c.inbox.max_age = Duration::from_secs(3600);
    let mut retention = c.inbox.clone();
    retention.max_age = Duration::from_millis(200);
    c.namespaces = vec![crate::config::NamespaceConfig {
        retention: Some(retention),
        ..crate::config::NamespaceConfig::inbox()
    }];
    let engine = f.make(hub, &c).await;
    let at = StreamPosition::new("e1", 5);
    engine.ack_inbox("yan", &at).await.expect("ack");
    // Past 2 × 200 ms (a slow machine only sleeps longer).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let cursor = engine.inbox_cursor("yan").await.expect("cursor");
    assert_eq!(cursor, None, "kept past 2 × the namespace's max age");
}
