//! The per-connection state the command handlers work on, and the room membership
//! operations they share: subscribe (locally and in the engine), presence, and the
//! session record a later `resume` starts from.

use crate::auth::Identity;
use crate::engine::{EngineError, SessionRecord, StoredGrant};
use crate::hooks::ConnectAnswer;
use crate::hub::ConnId;
use crate::node::Node;
use crate::outbound::{Outbound, OutboundQueue};
use crate::permissions::Membership;
use crate::protocol::{self, push, StreamPosition};
use std::collections::HashMap;
use std::sync::Arc;

/// A room the connection is in.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The position seen when it was (re)joined.
    pub at: StreamPosition,
    /// What the grant that let it in allows, and until when.
    pub member: Membership,
    /// The `expiring` push for its subscription token went out.
    pub warned: bool,
}

/// One client session on this node: who it is, what it joined, where its frames go.
pub struct Session {
    pub(super) node: Arc<Node>,
    pub(super) id: ConnId,
    /// `node/conn`: the connection's name in presence entries.
    pub(super) conn_key: String,
    pub(super) session: String,
    pub(super) resume_token: String,
    /// Who is connected and what their token grants (replaced by `refresh`).
    pub(super) identity: Identity,
    /// The `expiring` push for the connection token went out.
    pub(super) warned: bool,
    pub(super) inbox: Arc<str>,
    pub(super) queue: OutboundQueue,
    /// Joined rooms (not the inbox).
    pub(super) rooms: HashMap<Arc<str>, Joined>,
    /// The inbox's replay waits for `resume` (up to the grace period) or another command.
    pub(super) inbox_pending: bool,
    pub(super) connected_at: u64,
}

impl Session {
    /// A new session of `identity`, writing to `queue`, registered on the node as `id`.
    pub fn new(node: Arc<Node>, id: ConnId, identity: Identity, queue: OutboundQueue) -> Session {
        Session {
            conn_key: format!("{}/{}", node.id, id),
            node,
            id,
            session: random_hex(8),
            resume_token: random_hex(16),
            inbox: protocol::inbox_of(&identity.user).into(),
            identity,
            warned: false,
            queue,
            rooms: HashMap::new(),
            inbox_pending: true,
            connected_at: crate::engine::now_ms(),
        }
    }

    /// The user of the session.
    pub fn user(&self) -> &str {
        &self.identity.user
    }

    /// Sends `welcome` and subscribes the inbox, holding its messages back until the
    /// client's inbox position is known (see [`RESUME_GRACE`](super::RESUME_GRACE)); then
    /// joins the rooms the backend's connect hook named.
    pub async fn welcome(&mut self, extras: ConnectAnswer) {
        let welcome = push::Welcome {
            kind: "welcome".into(),
            protocol: protocol::PROTOCOL_VERSION,
            session: self.session.clone(),
            user: self.identity.user.clone(),
            resume_token: self.resume_token.clone(),
            heartbeat_ms: self.node.config.heartbeat.interval.as_millis() as u64,
            node: self.node.id.clone(),
            expires_at: self.identity.expires_at.map(|s| s * 1000),
            rooms: extras.rooms.clone(),
            data: extras.data,
        };
        self.queue.frame(protocol::to_json(&welcome));
        self.queue.push(Outbound::BeginCatchup(self.inbox.clone()));
        let inbox = self.inbox.clone();
        if let Err(e) = self.subscribe(&inbox).await {
            tracing::warn!(user = %self.identity.user, error = %e, "inbox subscribe failed");
            self.queue.frame(protocol::error_frame(
                None,
                protocol::ErrorCode::Unavailable,
                "inbox unavailable; resume later to receive direct messages",
            ));
        }
        for room in extras.rooms {
            let joined = self.join_for_backend(&room).await;
            if let Err(e) = joined {
                tracing::warn!(user = %self.identity.user, %room, error = %e.message, "connect hook room not joined");
                self.queue.frame(protocol::error_frame(
                    None,
                    e.code,
                    &format!("{room}: {}", e.message),
                ));
            }
        }
    }

    /// Joins a room the backend granted (connect hook): no `since`, send as the namespace
    /// allows.
    async fn join_for_backend(&mut self, room: &str) -> Result<(), super::cmd::Refusal> {
        protocol::validate_room(room, self.node.config.limits.max_room_name)
            .map_err(|m| super::cmd::Refusal::new(protocol::ErrorCode::InvalidRoom, m))?;
        if protocol::is_inbox(room) {
            return Err(super::cmd::Refusal::new(
                protocol::ErrorCode::Forbidden,
                "an inbox",
            ));
        }
        let room: Arc<str> = room.into();
        let member = crate::permissions::backend_grant(self.node.namespaces.of(&room), true);
        let caught = self.enter_room(&room, None, member).await?;
        self.queue.push(caught.replay);
        Ok(())
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
                .presence_join(room, &self.identity.user, &self.conn_key)
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
            .presence_leave(room, &self.identity.user, &self.conn_key)
            .await;
        if let Err(e) = left {
            // Presence entries expire on their own; a failed leave only shows the user
            // for a little longer.
            tracing::warn!(room = %room, error = %e, "presence leave failed");
        }
    }

    /// Tells the backend this connection opened (`connected` event).
    pub fn notify_connected(&self) {
        if let Some(events) = &self.node.hooks.events {
            events.notify(crate::hooks::events::Event::Connected {
                user: self.identity.user.clone(),
                session: self.session.clone(),
                node: self.node.id.clone(),
                ts: crate::engine::now_ms(),
            });
        }
    }

    /// Tells the backend this connection closed (`disconnected` event).
    pub fn notify_disconnected(&self, reason: &str) {
        if let Some(events) = &self.node.hooks.events {
            events.notify(crate::hooks::events::Event::Disconnected {
                user: self.identity.user.clone(),
                session: self.session.clone(),
                node: self.node.id.clone(),
                ts: crate::engine::now_ms(),
                reason: reason.to_string(),
            });
        }
    }

    /// Carries out what the node told this session (the server API, through the control
    /// plane).
    pub async fn on_control(&mut self, msg: crate::control::SessionCtl) {
        match msg {
            crate::control::SessionCtl::Unsubscribe { room, reason } => {
                let room: Arc<str> = room.into();
                if self.rooms.contains_key(&room) {
                    self.detach(&room).await;
                    self.queue.frame(push::unsubscribed_frame(&room, reason));
                    self.persist(&HashMap::new()).await;
                }
            }
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
                let at = written.get(room).unwrap_or(&joined.at);
                (room.to_string(), at.clone())
            })
            .collect();
        let grants = self
            .rooms
            .iter()
            .filter_map(|(room, joined)| {
                let expires_at = joined.member.expires_at?;
                let send = joined.member.send;
                Some((room.to_string(), StoredGrant { send, expires_at }))
            })
            .collect();
        if let Some(at) = written.get(&self.inbox) {
            rooms.insert(self.inbox.to_string(), at.clone());
        }
        let record = SessionRecord {
            user: self.identity.user.clone(),
            node: self.node.id.clone(),
            rooms,
            connected_at: self.connected_at,
            last_seen: crate::engine::now_ms(),
            grants,
        };
        if let Err(e) = self
            .node
            .engine
            .save_session(&self.resume_token, &record)
            .await
        {
            tracing::warn!(user = %self.identity.user, error = %e, "session not saved");
        }
    }
}

/// A random lowercase hex string of `bytes` bytes.
pub(crate) fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
