//! A message's trace context: carried from the publish to every delivery and into
//! history when it is a W3C `traceparent`, dropped when it is anything else (an API
//! caller's header is passed on as it came).

use super::{config, listen, publish, take, Factory};
use crate::engine::{Envelope, HistoryQuery};
use crate::hub::Hub;
use crate::outbound::Outbound;
use std::sync::Arc;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The frame's `traceparent` field, if it has one.
fn frame_trace(frame: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(frame).expect("frame is json");
    v.get("traceparent")
        .map(|t| t.as_str().expect("a string").to_string())
}

pub(super) async fn only_a_valid_traceparent_travels(f: &impl Factory) {
    let hub = Arc::new(Hub::default());
    let engine = f.make(hub.clone(), &config()).await;
    let mut rx = listen(&hub, &*engine, "r-trace", 1).await;
    for (id, tp) in [("bad", "not a traceparent"), ("good", VALID)] {
        let mut msg = publish("r-trace", "alice", id, "1");
        msg.traceparent = Some(tp.to_string());
        engine.publish(msg).await.expect("publish");
    }
    let got: Vec<Arc<Envelope>> = take(&mut rx, 2)
        .await
        .into_iter()
        .filter_map(|i| match i {
            Outbound::Msg(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 2, "both delivered");
    assert_eq!(got[0].traceparent, None, "delivered without the bad one");
    assert_eq!(frame_trace(&got[0].frame), None);
    assert_eq!(got[1].traceparent.as_deref(), Some(VALID));
    assert_eq!(frame_trace(&got[1].frame).as_deref(), Some(VALID));

    let q = HistoryQuery {
        limit: 10,
        ..HistoryQuery::default()
    };
    let page = engine.history("r-trace", q).await.expect("history");
    let stored: Vec<Option<String>> = page
        .messages
        .iter()
        .map(|m| frame_trace(&m.frame))
        .collect();
    assert_eq!(
        stored,
        [None, Some(VALID.to_string())],
        "history as delivered"
    );
}
