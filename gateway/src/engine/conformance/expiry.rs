//! Expiry: every message past its max age leaves at once, however many expired together:
//! history, the first retained seq (what a resume counts as covered) and the DM quota.
//!
//! The Redis engine's stream key lives two max ages after its last refresh, so the checks
//! below run while it lives: older than one max age, younger than two (a stream that
//! expired whole would hide what is left in it).

use super::{config, publish, Factory};
use crate::engine::{EngineError, HistoryQuery};
use crate::hub::Hub;
use std::sync::Arc;
use std::time::Duration;

const MAX_AGE: Duration = Duration::from_secs(1);

/// 100 messages, then 0.6 max ages later one more (the stream's expiry refreshed), then
/// 0.6 later history serves that one alone, from seq 101. Another 0.6 later it has expired
/// too: nothing, and `first` past `top`. (The Redis engine deleted at most 32 expired
/// messages a script call, and served the rest.)
pub(super) async fn a_backlog_of_expired_messages_leaves_at_once(f: &impl Factory) {
    let mut c = config();
    c.history.max_messages = 1_000;
    c.history.max_age = MAX_AGE;
    let engine = f.make(Arc::new(Hub::default()), &c).await;
    let send = |i: u32| engine.publish(publish("x1", "a", &format!("m{i}"), "0"));
    for i in 0..100 {
        send(i).await.expect("publish");
    }
    tokio::time::sleep(MAX_AGE * 6 / 10).await;
    send(100).await.expect("publish");
    tokio::time::sleep(MAX_AGE * 6 / 10).await;
    let all = HistoryQuery {
        since: Some(0),
        limit: 1_000,
        ..Default::default()
    };
    let page = engine.history("x1", all).await.expect("history");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [101], "the live one alone");
    assert_eq!((page.first, page.top), (101, 101));

    tokio::time::sleep(MAX_AGE * 6 / 10).await;
    let page = engine.history("x1", all).await.expect("history");
    assert!(page.messages.is_empty(), "{} expired", page.messages.len());
    assert_eq!((page.first, page.top), (102, 101), "nothing retained");
}

/// A sender whose DMs have all expired is under its quota again at once: the Redis
/// engine counted them (and refused) until someone else's publish or read trimmed them.
pub(super) async fn expired_dms_no_longer_count_against_the_quota(f: &impl Factory) {
    let mut c = config();
    c.inbox.max_age = MAX_AGE;
    c.namespaces = vec![crate::config::NamespaceConfig {
        dm_quota: 2,
        ..crate::config::NamespaceConfig::inbox()
    }];
    let engine = f.make(Arc::new(Hub::default()), &c).await;
    let dm = |id: &str| engine.publish(publish("user:bob", "x", id, "0"));
    dm("1").await.expect("dm");
    dm("2").await.expect("dm");
    let refused = dm("3").await;
    assert!(matches!(refused, Err(EngineError::Quota(_))), "{refused:?}");
    tokio::time::sleep(MAX_AGE * 12 / 10).await;
    dm("4").await.expect("both expired: under the quota again");
}
