//! The control plane: the server API's commands that must reach a user's connections on
//! every node (disconnect, unsubscribe). They travel as ephemeral messages of the internal
//! room [`CONTROL_ROOM`] (clients cannot name it: `$` is not a room-name character), which
//! every node subscribes to at start, so they use the engine's own fan-out: local on the
//! memory engine, Redis pub/sub across pods.

use crate::connection::session::Hex;
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
    /// A resume took the session of `user`'s connection with resume token `token` while
    /// that connection was open: close it (4409).
    SessionResumed {
        /// The user.
        user: String,
        /// The resume token the connection was given at its `welcome`.
        token: String,
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
/// get one), woken through a `Notify` the socket loop waits on. It also names the
/// connection's resume token, for a resume elsewhere to close it by
/// ([`Control::SessionResumed`]).
pub struct ConnCtl {
    /// The resume token of the connection's session (given at its `welcome`).
    pub resume_token: Hex<16>,
    pending: Mutex<Vec<SessionCtl>>,
    /// New verification keys came in force since the session last looked.
    keys_changed: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl ConnCtl {
    /// The mailbox of the connection whose session has resume token `resume_token`.
    pub fn new(resume_token: Hex<16>) -> Self {
        ConnCtl {
            resume_token,
            pending: Mutex::default(),
            keys_changed: Default::default(),
            notify: Notify::new(),
        }
    }

    /// Leaves a message for the session; one equal to a message still waiting is the same
    /// request and is not kept twice (the session reads its mailbox between commands, not
    /// during a long replay, and a backend may repeat an unsubscribe meanwhile).
    pub fn tell(&self, msg: SessionCtl) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.contains(&msg) {
            pending.push(msg);
        }
        drop(pending);
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

    /// Whether a message was left or the keys changed, without waiting or taking them.
    pub fn has_news(&self) -> bool {
        self.keys_changed.load(std::sync::atomic::Ordering::Relaxed)
            || !self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
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
        Control::SessionResumed { user, token } => {
            if let Some(token) = Hex::parse(&token) {
                node.close_session(&user, &token, crate::disconnect::SESSION_RESUMED);
            }
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

/// How many control messages (frames, bytes) may wait for the node: a burst of server API
/// calls (a backend banning thousands of users at once) arrives faster than the node
/// applies them, each one a look through all its connections.
const QUEUE_FRAMES: usize = 16_384;
const QUEUE_BYTES: usize = 8 << 20;

/// Subscribes the node to [`CONTROL_ROOM`] and applies what arrives, until shutdown. The
/// engine's subscriber re-subscribes after a Redis reconnect like any room.
pub async fn run(node: Arc<Node>) {
    let room: Arc<str> = Arc::from(CONTROL_ROOM);
    let (queue, mut rx) = outbound::queue(QUEUE_FRAMES, QUEUE_BYTES);
    node.hub.subscribe(&room, CONTROL_SUBSCRIBER, queue);
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
    while apply_until_overflow(&node, &mut rx).await {
        // The queue overflowed and dropped what it held: those messages are lost, as a
        // pub/sub message is to a node that is away. Listening again matters more: a loop
        // that ended here left the node ready but deaf to every later disconnect and ban.
        tracing::error!(
            "control messages lost: this node fell behind a burst of server API calls \
             (disconnect, unsubscribe); repeat them"
        );
        let (queue, fresh) = outbound::queue(QUEUE_FRAMES, QUEUE_BYTES);
        node.hub.subscribe(&room, CONTROL_SUBSCRIBER, queue);
        rx = fresh;
    }
}

/// Starts [`run`] for `node` and waits until it listens (tests: the server starts it
/// beside the listener).
#[cfg(test)]
pub(crate) async fn started(node: &Arc<Node>) {
    tokio::spawn(run(node.clone()));
    while !node
        .control_ready
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        tokio::task::yield_now().await;
    }
}

/// Applies control messages until shutdown (false) or until the queue overflowed (true).
async fn apply_until_overflow(node: &Node, rx: &mut outbound::OutboundReceiver) -> bool {
    loop {
        let item = tokio::select! {
            _ = node.shutdown.cancelled() => return false,
            item = rx.recv() => item,
        };
        match item {
            Some(Outbound::Msg(env)) => match parse(&env.frame) {
                Some(msg) => apply(node, msg),
                None => tracing::warn!("malformed control message dropped"),
            },
            Some(_) => {}
            None => return !node.shutdown.is_cancelled(),
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

    /// A repeated unsubscribe while the session is busy (a long replay) is kept once.
    #[test]
    fn a_repeated_message_waits_once() {
        let ctl = ConnCtl::new(Hex::random());
        let unsubscribe = |room: &str| SessionCtl::Unsubscribe {
            room: room.into(),
            reason: "removed by the server",
        };
        for _ in 0..1000 {
            ctl.tell(unsubscribe("a"));
        }
        ctl.tell(unsubscribe("b"));
        assert_eq!(ctl.take(), [unsubscribe("a"), unsubscribe("b")]);
        assert!(!ctl.has_news());
    }

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

    /// A burst of control messages larger than the node's queue loses what was waiting,
    /// and the node listens on: before, its control loop ended there for good, the node
    /// still ready, and no later disconnect or unsubscribe reached its connections.
    #[tokio::test]
    async fn a_node_that_fell_behind_a_burst_listens_on() {
        let mut config = crate::config::Config::default();
        config.auth.mode = crate::config::AuthMode::Insecure;
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        let node = Node::new(config, Default::default()).expect("node");
        started(&node).await;
        let ctl = Arc::new(ConnCtl::new(Hex::random()));
        let (queue, _rx) = outbound::queue(8, 1024);
        node.register(queue, "bob", Some(ctl.clone()));
        let unsubscribe = |room: &str| Control::Unsubscribe {
            user: "bob".into(),
            room: room.into(),
        };
        // One runtime thread: the control loop runs only once this task waits, and the
        // memory engine publishes without waiting.
        for _ in 0..=QUEUE_FRAMES {
            send(&node, &unsubscribe("burst")).await.expect("send");
        }
        send(&node, &unsubscribe("after")).await.expect("send");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(ctl.take().is_empty(), "the burst overflowed the queue");
        send(&node, &unsubscribe("later")).await.expect("send");
        let told = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let told = ctl.take();
                if !told.is_empty() {
                    return told;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the node listens again");
        assert_eq!(
            told,
            [SessionCtl::Unsubscribe {
                room: "later".into(),
                reason: "removed by the server"
            }]
        );
    }
}
