//! `memory.maxBytes`: what the memory engine holds stays within it, and what goes first.

use super::budget::{container_limit, resolve};
use super::*;
use crate::config::MemoryConfig;
use std::sync::atomic::{AtomicU64, Ordering};

const MAX: u64 = 1 << 20;
/// A body of about a kilobyte: a message costs about 1.7 KB with its frame, bookkeeping and
/// msg id.
const BODY: usize = 1000;

/// Every message its own id (a repeated one would be a duplicate, not stored).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn engine() -> MemoryEngine {
    let mut c = Config::default();
    c.memory.max_bytes = Some(MAX);
    MemoryEngine::new(Arc::new(Hub::default()), &c)
}

async fn publish(e: &MemoryEngine, room: &str, n: usize) {
    for i in 0..n {
        let body = format!("\"{}\"", "x".repeat(BODY));
        let body = serde_json::value::RawValue::from_string(body).expect("raw");
        let before = evicted(e, false) + evicted(e, true);
        e.publish(Publish {
            room: room.into(),
            // A sender each: an inbox takes 100 of one sender's (`dmQuota`).
            from: format!("sender{i}"),
            msg_id: format!("{room}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            body,
            traceparent: None,
        })
        .await
        .expect("publish");
        let held = e.budget.held();
        assert!(held <= MAX, "held {held} after a publish");
        // An eviction goes down to nine tenths, not one message under the budget.
        if evicted(e, false) + evicted(e, true) > before {
            assert!(held <= MAX - MAX / 10, "held {held} after an eviction");
        }
    }
    // The next room's messages are younger by the clock eviction orders them by.
    tokio::time::sleep(Duration::from_millis(2)).await;
}

/// The seqs a stream still holds: (first, top).
async fn kept(e: &MemoryEngine, room: &str) -> (u64, u64) {
    let q = HistoryQuery {
        limit: 1,
        ..Default::default()
    };
    let page = e.history(room, q).await.expect("history");
    (page.first, page.top)
}

fn evicted(e: &MemoryEngine, inbox: bool) -> u64 {
    if inbox {
        e.budget.evicted_inboxes.get()
    } else {
        e.budget.evicted_rooms.get()
    }
}

#[tokio::test]
async fn the_oldest_room_messages_go_first_and_inboxes_wait_for_the_rooms() {
    let e = engine();
    publish(&e, "user:bob", 100).await;
    publish(&e, "old", 200).await;
    publish(&e, "new", 200).await;
    assert_eq!(evicted(&e, false), 0, "500 messages fit in 1 MiB");
    publish(&e, "new", 150).await;
    let (old_first, _) = kept(&e, "old").await;
    assert!(old_first > 1, "the oldest room gave up its oldest messages");
    assert_eq!(kept(&e, "new").await, (1, 350), "the newer room kept all");
    assert_eq!(kept(&e, "user:bob").await, (1, 100), "the inbox kept all");
    assert_eq!(evicted(&e, false), old_first - 1, "each one counted");

    // Once the old room is empty, the newer room goes oldest first; the inbox still waits.
    publish(&e, "new", 500).await;
    assert_eq!(kept(&e, "old").await, (201, 200), "emptied, its seqs kept");
    let (new_first, _) = kept(&e, "new").await;
    assert!(new_first > 1);
    assert_eq!(kept(&e, "user:bob").await, (1, 100));
    assert_eq!(evicted(&e, false), 200 + new_first - 1);
    assert_eq!(evicted(&e, true), 0);
}

#[tokio::test]
async fn with_no_room_messages_left_the_oldest_inbox_goes_first() {
    let e = engine();
    publish(&e, "user:bob", 250).await;
    publish(&e, "user:carol", 250).await;
    publish(&e, "user:dave", 250).await;
    let (bob_first, _) = kept(&e, "user:bob").await;
    assert!(bob_first > 1, "the oldest inbox gave up its oldest DMs");
    assert_eq!(kept(&e, "user:carol").await, (1, 250));
    assert_eq!(kept(&e, "user:dave").await, (1, 250));
    assert_eq!(evicted(&e, true), bob_first - 1);
}

#[tokio::test]
async fn trimmed_and_pruned_messages_give_their_bytes_back() {
    let mut c = Config::default();
    c.history.max_messages = 10;
    c.history.max_age = Duration::from_millis(50);
    c.sessions.dedup_window = Duration::from_millis(50);
    let e = MemoryEngine::new(Arc::new(Hub::default()), &c);
    publish(&e, "r", 100).await;
    // Ten messages, and the msg ids of all 100 (each remembered for the dedup window).
    let ten = e.budget.held();
    let ids = 100 * budget::PER_MSG_ID;
    assert!(
        ten > 10 * BODY as u64 + ids && ten < 10 * (BODY as u64 + 1000) + ids + 100 * 64,
        "{ten}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(past) = Instant::now().checked_sub(PRUNE_EVERY * 2) {
        *lock(&e.pruned) = past;
    }
    e.history("other", HistoryQuery::default())
        .await
        .expect("history");
    assert!(lock(&e.streams).is_empty(), "pruned");
    assert_eq!(e.budget.held(), 0);
    // A stream dropped with messages in it (here: a test's rewind) gives them back too.
    publish(&e, "s", 5).await;
    assert!(e.budget.held() > 0);
    e.rewind_for_test("s", None).await;
    assert_eq!(e.budget.held(), 0);
}

/// Msg ids outlive their messages for the dedup window: a room trimmed to one message that
/// takes thousands of sends held them all outside the budget (about 150 MB at 2,000 sends
/// a second for the default 5 minutes). They count now, and go (oldest first) once no
/// message is left to drop.
#[tokio::test]
async fn msg_ids_count_against_the_budget_and_go_last() {
    let mut c = Config::default();
    c.memory.max_bytes = Some(MAX);
    c.history.max_messages = 1;
    let e = MemoryEngine::new(Arc::new(Hub::default()), &c);
    let ids_fit = MAX / (budget::PER_MSG_ID + 16);
    for i in 0..ids_fit + 1000 {
        let body = serde_json::value::RawValue::from_string("1".into()).expect("raw");
        e.publish(Publish {
            room: "busy".into(),
            from: "a".into(),
            msg_id: format!("id-{i}"),
            body,
            traceparent: None,
        })
        .await
        .expect("publish");
        let held = e.budget.held();
        assert!(held <= MAX, "held {held} after {i} sends");
    }
    assert!(e.budget.evicted_ids.get() > 0, "the oldest ids went");
    assert_eq!(
        kept(&e, "busy").await.1,
        ids_fit + 1000,
        "every send stored once"
    );
}

#[test]
fn the_container_limit_is_read_from_cgroup_v2_then_v1() {
    let some = |s: &str| Some(s.to_string());
    assert_eq!(container_limit(some("536870912\n"), None), Some(512 << 20));
    assert_eq!(container_limit(some("max\n"), some("1073741824\n")), None);
    assert_eq!(container_limit(None, some("1073741824\n")), Some(1 << 30));
    assert_eq!(container_limit(None, some("9223372036854771712\n")), None);
    assert_eq!(container_limit(None, None), None);
}

#[test]
fn a_configured_budget_wins_over_the_container() {
    let configured = MemoryConfig {
        max_bytes: Some(3 << 20),
    };
    assert_eq!(resolve(&configured).0, 3 << 20);
    assert!(resolve(&MemoryConfig::default()).0 >= MemoryConfig::MIN_BYTES);
}
