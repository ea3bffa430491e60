//! Many leaves at once ([`PresenceManager::presence_leave_all`]): each as one leave would
//! be, across rooms, beyond what one engine call takes, and with members that are not
//! there. A listing up to a limit ([`PresenceManager::presence_upto`]).
//!
//! [`PresenceManager::presence_leave_all`]: crate::engine::PresenceManager::presence_leave_all
//! [`PresenceManager::presence_upto`]: crate::engine::PresenceManager::presence_upto

use super::{config, listen, take, Factory};
use crate::engine::PresenceLeave;
use crate::hub::Hub;
use crate::outbound::Outbound;
use std::sync::Arc;

/// The users a room's presence frames announced leaving, in order.
fn left(items: &[Outbound]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Outbound::Frame(f) => serde_json::from_str::<serde_json::Value>(f).ok(),
            _ => None,
        })
        .flat_map(|e| e["left"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect()
}

pub(super) async fn many_leaves_at_once_are_each_a_leave(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    let mut crowd_rx = listen(&hub, &*engine, "crowd", 1).await;
    let mut side_rx = listen(&hub, &*engine, "side", 2).await;
    // More users than one call of an engine that batches takes (64 for Redis).
    let users: Vec<String> = (0..70).map(|i| format!("u{i:02}")).collect();
    for u in &users {
        engine.presence_join("crowd", u, "c1").await.expect("join");
    }
    engine
        .presence_join("crowd", "u00", "c2")
        .await
        .expect("join");
    engine
        .presence_join("side", "carol", "c1")
        .await
        .expect("join");
    let joins = take(&mut crowd_rx, 70).await.len() + take(&mut side_rx, 1).await.len();
    assert_eq!(joins, 71, "one join announced per user");

    let mut leaves: Vec<PresenceLeave> = users
        .iter()
        .map(|u| PresenceLeave {
            room: "crowd",
            user: u,
            conn: "c1",
        })
        .collect();
    leaves.push(PresenceLeave {
        room: "side",
        user: "carol",
        conn: "c1",
    });
    // Never joined: nothing to remove, nothing announced, no error.
    leaves.push(PresenceLeave {
        room: "side",
        user: "dave",
        conn: "c9",
    });
    engine.presence_leave_all(&leaves).await.expect("leave all");

    assert_eq!(
        engine.presence("crowd").await.expect("list"),
        ["u00"],
        "u00 is still there by its second connection"
    );
    assert!(engine.presence("side").await.expect("list").is_empty());
    let crowd_left = left(&take(&mut crowd_rx, 69).await);
    let expected: Vec<String> = users[1..].to_vec();
    assert_eq!(
        crowd_left, expected,
        "each last connection's user, in order"
    );
    assert_eq!(left(&take(&mut side_rx, 1).await), ["carol"]);
    // Nothing more (a room's frames come in order): the next frame of each room is the
    // next change, not an announcement of u00's first connection or of dave.
    engine
        .presence_leave("crowd", "u00", "c2")
        .await
        .expect("leave");
    assert_eq!(left(&take(&mut crowd_rx, 1).await), ["u00"]);
    engine
        .presence_join("side", "erin", "c1")
        .await
        .expect("join");
    let next = take(&mut side_rx, 1).await;
    assert!(left(&next).is_empty(), "no leave after carol's");
    assert_eq!(next.len(), 1, "erin's join");
    assert!(engine.presence_leave_all(&[]).await.is_ok());
}

/// A listing up to a limit: that many distinct users present, sorted, and the count of
/// all; all of them within the limit. 300 users: past what Redis keeps as a listpack
/// (128), so its listing pages through the hash's scan.
pub(super) async fn a_listing_holds_at_most_its_limit_and_counts_all(f: &impl Factory) {
    let engine = f.make(Arc::new(Hub::default()), &config()).await;
    let users: Vec<String> = (0..300).map(|i| format!("u{i:03}")).collect();
    for u in &users {
        engine.presence_join("big", u, "c1").await.expect("join");
    }
    engine
        .presence_join("big", "u000", "c2")
        .await
        .expect("join");
    for limit in [1, 7, 100, 299] {
        let some = engine.presence_upto("big", limit).await.expect("list");
        assert_eq!(some.count, 300, "limit {limit}");
        assert_eq!(some.users.len(), limit, "limit {limit}");
        assert!(
            some.users.is_sorted(),
            "sorted, each once: {:?}",
            some.users
        );
        assert!(
            some.users.windows(2).all(|w| w[0] != w[1]),
            "{:?}",
            some.users
        );
        assert!(
            some.users.iter().all(|u| users.contains(u)),
            "{:?}",
            some.users
        );
    }
    for limit in [300, 1000, usize::MAX] {
        let all = engine.presence_upto("big", limit).await.expect("list");
        assert_eq!((all.users.as_slice(), all.count), (&users[..], 300));
    }
    let none = engine.presence_upto("empty", 10).await.expect("list");
    assert_eq!((none.users.len(), none.count), (0, 0));
}
