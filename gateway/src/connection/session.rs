//! The per-connection state the command handlers work on, and the room membership
//! operations they share: subscribe (locally and in the engine), presence, and the
//! session record a later `resume` starts from.

use crate::engine::{EngineError, SessionRecord};
use crate::hub::ConnId;
use crate::node::Node;
use crate::outbound::{Outbound, OutboundQueue};
use crate::protocol::{self, push, StreamPosition};
use std::collections::HashMap;
use std::sync::Arc;

/// One client session on this node: who it is, what it joined, where its frames go.
pub struct Session {
    pub(super) node: Arc<Node>,
    pub(super) id: ConnId,
    /// `node/conn`: the connection's name in presence entries.
    pub(super) conn_key: String,
    pub(super) session: String,
    pub(super) resume_token: String,
    pub(super) user: String,
    pub(super) inbox: Arc<str>,
    pub(super) queue: OutboundQueue,
    /// Joined rooms (not the inbox) and the position seen when each was (re)joined.
    pub(super) rooms: HashMap<Arc<str>, StreamPosition>,
    /// The inbox's replay waits for `resume` (up to the grace period) or another command.
    pub(super) inbox_pending: bool,
    pub(super) connected_at: u64,
}

impl Session {
    /// A new session of `user`, writing to `queue`, registered on the node as `id`.
    pub fn new(node: Arc<Node>, id: ConnId, user: String, queue: OutboundQueue) -> Session {
        Session {
            conn_key: format!("{}/{}", node.id, id),
            node,
            id,
            session: random_hex(8),
            resume_token: random_hex(16),
            inbox: protocol::inbox_of(&user).into(),
            user,
            queue,
            rooms: HashMap::new(),
            inbox_pending: true,
            connected_at: crate::engine::now_ms(),
        }
    }

    /// The user of the session.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Sends `welcome` and subscribes the inbox, holding its messages back until the
    /// client's inbox position is known (see [`RESUME_GRACE`](super::RESUME_GRACE)).
    pub async fn welcome(&mut self) {
        let welcome = push::Welcome {
            kind: "welcome".into(),
            protocol: protocol::PROTOCOL_VERSION,
            session: self.session.clone(),
            user: self.user.clone(),
            resume_token: self.resume_token.clone(),
            heartbeat_ms: self.node.config.heartbeat.interval.as_millis() as u64,
            node: self.node.id.clone(),
        };
        self.queue.frame(protocol::to_json(&welcome));
        self.queue.push(Outbound::BeginCatchup(self.inbox.clone()));
        let inbox = self.inbox.clone();
        if let Err(e) = self.subscribe(&inbox).await {
            tracing::warn!(user = %self.user, error = %e, "inbox subscribe failed");
            self.queue.frame(protocol::error_frame(
                None,
                protocol::ErrorCode::Unavailable,
                "inbox unavailable; resume later to receive direct messages",
            ));
        }
    }

    /// Subscribes this connection to a room locally and, for the first local subscriber,
    /// in the engine. Undone on failure.
    pub(super) async fn subscribe(&self, room: &Arc<str>) -> Result<(), EngineError> {
        if self.node.hub.subscribe(room, self.id, self.queue.clone()) {
            self.update_room_gauge();
        }
        // Every joiner waits for the node's subscription to be live (not only the first):
        // reading history before that could miss a message.
        if let Err(e) = self.node.engine.subscribe(room).await {
            self.unsubscribe(room).await;
            return Err(e);
        }
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) {
        if self.node.hub.unsubscribe(room, self.id) {
            self.update_room_gauge();
            if let Err(e) = self.node.engine.unsubscribe(room).await {
                tracing::warn!(room, error = %e, "engine unsubscribe failed");
            }
        }
    }

    fn update_room_gauge(&self) {
        self.node
            .metrics
            .rooms
            .set(self.node.hub.room_count() as i64);
    }

    /// Starts holding a room's live messages, subscribes and marks presence. On failure
    /// nothing of it remains.
    pub(super) async fn attach(&mut self, room: &Arc<str>) -> Result<(), EngineError> {
        self.queue.push(Outbound::BeginCatchup(room.clone()));
        let attached = async {
            self.subscribe(room).await?;
            let present = self
                .node
                .engine
                .presence_join(room, &self.user, &self.conn_key)
                .await;
            if let Err(e) = present {
                self.unsubscribe(room).await;
                return Err(e);
            }
            Ok(())
        }
        .await;
        if attached.is_err() {
            self.queue.push(Outbound::Forget(room.clone()));
        }
        attached
    }

    /// Takes the connection out of a room: the writer forgets it, the node unsubscribes
    /// if it was the last local member, presence announces the leave.
    pub(super) async fn detach(&mut self, room: &Arc<str>) {
        self.rooms.remove(room);
        self.queue.push(Outbound::Forget(room.clone()));
        self.release(room).await;
    }

    /// The engine side of leaving a room (the writer is not involved).
    async fn release(&self, room: &Arc<str>) {
        self.unsubscribe(room).await;
        let left = self
            .node
            .engine
            .presence_leave(room, &self.user, &self.conn_key)
            .await;
        if let Err(e) = left {
            // Presence entries expire on their own; a failed leave only shows the user
            // for a little longer.
            tracing::warn!(room = %room, error = %e, "presence leave failed");
        }
    }

    /// After the socket closed: leaves every room and the inbox, and stores the session
    /// for a resume, starting from what the writer actually `written` per room.
    pub async fn close(&mut self, written: &HashMap<Arc<str>, StreamPosition>) {
        let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for room in &rooms {
            self.release(room).await;
        }
        let inbox = self.inbox.clone();
        self.unsubscribe(&inbox).await;
        self.persist(written).await;
    }

    /// Saves the session for a later resume; `written` (the writer's positions at the
    /// end) overrides the positions known at join time.
    pub(super) async fn persist(&self, written: &HashMap<Arc<str>, StreamPosition>) {
        let mut rooms: std::collections::BTreeMap<String, StreamPosition> = self
            .rooms
            .iter()
            .map(|(room, joined)| {
                let at = written.get(room).unwrap_or(joined);
                (room.to_string(), at.clone())
            })
            .collect();
        if let Some(at) = written.get(&self.inbox) {
            rooms.insert(self.inbox.to_string(), at.clone());
        }
        let record = SessionRecord {
            user: self.user.clone(),
            node: self.node.id.clone(),
            rooms,
            connected_at: self.connected_at,
            last_seen: crate::engine::now_ms(),
        };
        if let Err(e) = self
            .node
            .engine
            .save_session(&self.resume_token, &record)
            .await
        {
            tracing::warn!(user = %self.user, error = %e, "session not saved");
        }
    }
}

/// A random lowercase hex string of `bytes` bytes.
pub(crate) fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
