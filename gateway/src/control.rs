//! The control plane: the server API's commands that must reach a user's connections on
//! every node (disconnect, unsubscribe). They travel as ephemeral messages of the internal
//! room [`CONTROL_ROOM`] (clients cannot name it: `$` is not a room-name character), which
//! every node subscribes to at start, so they use the engine's own fan-out: local on the
//! memory engine, Redis pub/sub across pods.

use crate::engine::Publish;
use crate::hub::ConnId;
use crate::node::Node;
use crate::outbound::{self, Outbound};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The internal room carrying control messages.
pub const CONTROL_ROOM: &str = "$control";

/// Hub id of the node's own control subscriber (connection ids start at 1).
const CONTROL_SUBSCRIBER: ConnId = 0;

/// A control message, as it travels (the body of a `$control` message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Control {
    /// Close every connection of `user` with `code` and `reason`.
    Disconnect {
        /// The user.
        user: String,
        /// Whether the client may reconnect (close 4100) or must not (4101).
        reconnect: bool,
        /// Reason in the close frame (at most 100 bytes are sent).
        reason: String,
    },
    /// Take `user`'s connections out of `room`.
    Unsubscribe {
        /// The user.
        user: String,
        /// The room.
        room: String,
    },
}

/// What a session is told by the node (through its [`ConnCtl`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCtl {
    /// Leave a room, with an `unsubscribed` push giving `reason`.
    Unsubscribe {
        /// The room.
        room: String,
        /// Why, for the push.
        reason: &'static str,
    },
}

/// A chat connection's mailbox for [`SessionCtl`] messages: small (most connections never
/// get one), woken through a `Notify` the socket loop waits on.
#[derive(Default)]
pub struct ConnCtl {
    pending: Mutex<Vec<SessionCtl>>,
    /// New verification keys came in force since the session last looked.
    keys_changed: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl ConnCtl {
    /// Leaves a message for the session.
    pub fn tell(&self, msg: SessionCtl) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(msg);
        self.notify.notify_one();
    }

    /// New verification keys are in force: the session checks its token's key.
    pub fn keys_changed(&self) {
        self.keys_changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Whether keys changed since the last call.
    pub fn take_keys_changed(&self) -> bool {
        self.keys_changed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until a message is left (or the keys changed).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Takes the messages left so far.
    pub fn take(&self) -> Vec<SessionCtl> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Sends a control message to every node (this one included).
pub async fn send(node: &Node, msg: &Control) -> Result<(), crate::engine::EngineError> {
    let body = serde_json::value::to_raw_value(msg)
        .map_err(|e| crate::engine::EngineError::Internal(e.to_string()))?;
    node.engine
        .publish(Publish {
            room: CONTROL_ROOM.into(),
            from: node.id.clone(),
            msg_id: crate::connection::session::new_msg_id(),
            body,
            traceparent: None,
        })
        .await
        .map(|_| ())
}

/// Applies a control message to this node's connections.
pub fn apply(node: &Node, msg: Control) {
    match msg {
        Control::Disconnect {
            user,
            reconnect,
            reason,
        } => {
            let close = if reconnect {
                crate::disconnect::BACKEND_DISCONNECT
            } else {
                crate::disconnect::BACKEND_BAN
            };
            let n = node.close_user(&user, close);
            tracing::info!(%user, reconnect, %reason, connections = n, "disconnected by the server API");
        }
        Control::Unsubscribe { user, room } => {
            node.tell_user(
                &user,
                SessionCtl::Unsubscribe {
                    room,
                    reason: "removed by the server",
                },
            );
        }
    }
}

/// Subscribes the node to [`CONTROL_ROOM`] and applies what arrives, until shutdown. The
/// engine's subscriber re-subscribes after a Redis reconnect like any room.
pub async fn run(node: Arc<Node>) {
    let (queue, mut rx) = outbound::queue(1024, 1 << 20);
    node.hub
        .subscribe(&Arc::from(CONTROL_ROOM), CONTROL_SUBSCRIBER, queue);
    // Redis may not be up yet: retry until the subscription is live. The node is not
    // ready before (a disconnect sent meanwhile would miss it).
    let mut wait = std::time::Duration::from_millis(50);
    while let Err(e) = node.engine.subscribe(CONTROL_ROOM).await {
        tracing::debug!(error = %e, "control channel not subscribed yet");
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(1));
    }
    node.control_ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    loop {
        let item = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            item = rx.recv() => item,
        };
        let Some(Outbound::Msg(env)) = item else {
            if item.is_none() {
                return;
            }
            continue;
        };
        match parse(&env.frame) {
            Some(msg) => apply(&node, msg),
            None => tracing::warn!("malformed control message dropped"),
        }
    }
}

/// The control message in a `$control` msg frame.
fn parse(frame: &str) -> Option<Control> {
    #[derive(Deserialize)]
    struct Frame {
        body: Control,
    }
    serde_json::from_str::<Frame>(frame).ok().map(|f| f.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_through_a_msg_frame() {
        let msg = Control::Disconnect {
            user: "bob".into(),
            reconnect: false,
            reason: "banned".into(),
        };
        let body = serde_json::value::to_raw_value(&msg).expect("raw");
        let frame = crate::protocol::push::ephemeral_msg_frame(
            crate::protocol::push::MsgContent {
                room: CONTROL_ROOM,
                msg_id: "m",
                from: "node",
                body: &body,
                traceparent: None,
            },
            1,
        );
        assert_eq!(parse(&frame), Some(msg));
        assert_eq!(parse(r#"{"body":{"op":"dance"}}"#), None);
    }
}
