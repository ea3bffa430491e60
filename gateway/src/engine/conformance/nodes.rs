//! Conformance checks of what the cluster's nodes share: the registry of nodes and the
//! users' room starts (`limits.newRoomsPerHour`).

use super::{config, Factory};
use crate::hub::Hub;
use std::sync::Arc;

pub(super) async fn registry(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    let report = crate::engine::NodeReport {
        id: "n9".into(),
        connections: 12,
        draining: false,
        heartbeat: crate::engine::now_ms(),
    };
    engine.report_node(&report).await.expect("report");
    assert!(engine.nodes().await.expect("nodes").contains(&report));
}

/// An engine that keeps the users' room starts for the cluster counts each start down
/// from the burst, per user, and below zero (the debt of nodes that started rooms before
/// they learnt of the others') to at most minus the burst. One that keeps none says so.
pub(super) async fn room_starts_count_down_per_user_to_a_bounded_debt(f: &impl Factory) {
    let engine = f.make(Arc::new(Hub::default()), &config()).await;
    // 3 an hour: a test's milliseconds refill a millionth of a token.
    let rate = 3.0 / 3600.0;
    let mut left = Vec::new();
    for _ in 0..7 {
        match engine.start_room("mallory", rate, 3).await.expect("start") {
            Some(n) => left.push(n.round() as i64),
            None => return, // the node's own count is the cluster's
        }
    }
    assert_eq!(left, [2, 1, 0, -1, -2, -3, -3]);
    let other = engine.start_room("alice", rate, 3).await.expect("start");
    assert_eq!(
        other.map(f64::round),
        Some(2.0),
        "another user's own bucket"
    );
}
