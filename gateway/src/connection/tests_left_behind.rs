//! A resume closes the connection it took the session from when that connection was
//! still open (4409): its client moved on without closing it, or a copy of the client
//! took over its token. Saves say whether their connection was open.

use super::tests::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// `h`'s node, its control plane running (the server starts it beside the listener).
async fn with_control(h: &Harness) -> Arc<crate::node::Node> {
    crate::control::started(&h.node).await;
    h.node.clone()
}

/// The close code `h`'s connection was closed with, waiting up to 5 s for one.
async fn closed_with(h: &Harness) -> Option<u16> {
    for _ in 0..500 {
        if let Some(reason) = h.session.queue.close_reason() {
            return Some(reason.code);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn a_resume_closes_the_open_connection_it_took_the_session_from() {
    let mut laptop = Harness::new("bob").await;
    let node = with_control(&laptop).await;
    laptop
        .cmd(json!({"type": "join", "id": 1, "room": "r"}))
        .await;
    // The save the join scheduled, as the socket loop makes it.
    laptop.session.persist(&HashMap::new(), true).await;
    let token = laptop.session.resume_token.to_string();
    let saved = node.engine.peek_session_for_test(&token).await;
    assert!(saved.is_some_and(|r| r.open), "saved while open: says so");

    let other = Harness::on(node.clone(), "bob").await;
    let mut phone = Harness::on(node.clone(), "bob").await;
    phone
        .cmd(json!({"type": "resume", "id": 2, "resume_token": token}))
        .await;
    assert_eq!(phone.reply_of(2)["type"], "ok");
    assert_eq!(closed_with(&laptop).await, Some(4409));
    assert!(
        !other.session.queue.is_closing() && !phone.session.queue.is_closing(),
        "only the connection left behind"
    );
}

#[tokio::test]
async fn a_session_its_close_saved_says_so_and_closes_nothing() {
    let mut laptop = Harness::new("bob").await;
    let node = with_control(&laptop).await;
    laptop
        .cmd(json!({"type": "join", "id": 1, "room": "r"}))
        .await;
    let token = laptop.session.resume_token.to_string();
    laptop.session.close(&HashMap::new()).await;
    let saved = node.engine.peek_session_for_test(&token).await;
    assert!(
        saved.is_some_and(|r| !r.open),
        "saved by the close: not open"
    );
}

#[tokio::test]
async fn a_connection_cannot_resume_its_own_token() {
    let mut h = Harness::new("bob").await;
    h.cmd(json!({"type": "join", "id": 1, "room": "r"})).await;
    h.session.persist(&HashMap::new(), true).await;
    let token = h.session.resume_token.to_string();
    h.drain();
    assert!(
        h.cmd(json!({"type": "resume", "id": 2, "resume_token": token}))
            .await
    );
    assert_eq!(error_code(&h.reply()), "bad_request");
    let kept = h.node.engine.peek_session_for_test(&token).await;
    assert!(kept.is_some(), "the token stays good");
}

/// A connection with nothing in the store (it never joined a room, or its last save
/// expired): a resume from the client's positions still closes it, and its close stores
/// nothing under the spent token.
#[tokio::test]
async fn a_resume_closes_an_open_connection_that_stored_nothing() {
    let mut laptop = Harness::new("bob").await;
    let node = with_control(&laptop).await;
    let token = laptop.session.resume_token.to_string();
    assert!(node.engine.peek_session_for_test(&token).await.is_none());

    let mut phone = Harness::on(node.clone(), "bob").await;
    phone
        .cmd(
            json!({"type": "resume", "id": 2, "resume_token": token, "positions": {"user:bob": 0}}),
        )
        .await;
    assert_eq!(phone.reply_of(2)["type"], "ok");
    assert_eq!(closed_with(&laptop).await, Some(4409));
    laptop.session.close(&HashMap::new()).await;
    let stored = node.engine.peek_session_for_test(&token).await;
    assert!(stored.is_none(), "the spent token stays spent: {stored:?}");
}

/// Without positions the resume fails (`session_not_found`): it took nothing, and the
/// connection holding the token goes on.
#[tokio::test]
async fn a_failed_resume_closes_nothing() {
    let laptop = Harness::new("bob").await;
    let node = with_control(&laptop).await;
    let token = laptop.session.resume_token.to_string();
    let mut phone = Harness::on(node.clone(), "bob").await;
    phone
        .cmd(json!({"type": "resume", "id": 2, "resume_token": token}))
        .await;
    assert_eq!(error_code(&phone.reply_of(2)), "session_not_found");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!laptop.session.queue.is_closing());
}
