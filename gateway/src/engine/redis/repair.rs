//! The epoch rule's second witness: a node subscribed to a room sees a message appended
//! at a seq it already had (a sender's node that never saw the room numbered on after the
//! store fell behind). It starts a new epoch if nobody did yet and publishes the message
//! again in it, so no client drops it as a duplicate. The msg id makes a second repair by
//! another node a no-op.

use super::shared::Shared;
use crate::engine::{Envelope, Publish};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Repairs the messages the subscriber reports (see the module docs) until stopped.
pub(super) async fn repair(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Arc<Envelope>>,
    stop: CancellationToken,
) {
    loop {
        let env = tokio::select! {
            _ = stop.cancelled() => return,
            env = rx.recv() => match env {
                Some(env) => env,
                None => return,
            },
        };
        // Proof of reuse is the message itself: bump whatever the top now is.
        let current = match shared
            .bump_epoch(&env.room, &env.epoch, u64::MAX >> 12)
            .await
        {
            Ok((_, current)) => current,
            Err(e) => {
                tracing::warn!(room = %env.room, error = %e, "epoch repair failed");
                continue;
            }
        };
        if *current == *env.epoch {
            continue;
        }
        let Some(again) = republish(&env) else {
            continue;
        };
        match super::publish(&shared, &again).await {
            Ok(p) => tracing::warn!(room = %env.room, old_seq = env.seq, new_epoch = %p.at.epoch,
                new_seq = p.at.seq, duplicate = p.duplicate, "message of a reused epoch published again"),
            Err(e) => tracing::warn!(room = %env.room, error = %e, "republish failed"),
        }
    }
}

/// The publish a stored `msg` frame came from.
fn republish(env: &Envelope) -> Option<Publish> {
    #[derive(serde::Deserialize)]
    struct Stored {
        msg_id: String,
        from: String,
        body: Box<serde_json::value::RawValue>,
        traceparent: Option<String>,
    }
    let s: Stored = serde_json::from_str(&env.frame).ok()?;
    Some(Publish {
        room: env.room.clone(),
        from: s.from,
        msg_id: s.msg_id,
        body: s.body,
        traceparent: s.traceparent,
    })
}
