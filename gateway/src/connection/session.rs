//! The per-connection state the command handlers work on, and the room membership
//! operations they share: subscribe (locally and in the engine), presence, and the
//! session record a later `resume` starts from.

use crate::auth::Identity;
use crate::engine::{EngineError, HistoryPage, SaveOutcome, SessionRecord, StoredGrant};
use crate::hooks::ConnectAnswer;
use crate::hub::ConnId;
use crate::log_gate::warn_gated;
use crate::node::Node;
use crate::outbound::{Outbound, OutboundQueue};
use crate::permissions::Membership;
use crate::protocol::{self, push, StreamPosition};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::sync::Arc;

/// A room the connection is in.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Where the client stood when it was (re)joined: the start of its replay (the top
    /// when there is nothing to replay), never a position the replay has yet to deliver.
    /// A session save falls back to it for a room the writer reported nothing of.
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
    pub(super) session: Hex<8>,
    pub(super) resume_token: Hex<16>,
    /// Who is connected and what their token grants (replaced by `refresh`).
    pub(super) identity: Identity,
    /// The `expiring` push for the connection token went out.
    pub(super) warned: bool,
    pub(super) inbox: Arc<str>,
    pub(super) queue: OutboundQueue,
    /// Joined rooms (not the inbox).
    pub(super) rooms: BTreeMap<Arc<str>, Joined>,
    /// The inbox's replay waits for `resume` (up to the grace period) or another command.
    pub(super) inbox_pending: bool,
    /// A `resume` was taken: one per connection (each catches up every room it names).
    pub(super) resumed: bool,
    /// The inbox's head as the engine read it when it started delivering the inbox (see
    /// [`Broker::subscribe`](crate::engine::Broker::subscribe)), for that replay to start
    /// from instead of reading it again. Boxed: held only until the replay starts, and
    /// every connection's task would carry it inline.
    pub(super) inbox_head: Option<Box<HistoryPage>>,
    /// This device's acknowledged inbox position: where its inbox replay started, moved
    /// on by `ack` (and by the inbox position of a `resume`). Saved with the session, so
    /// the device's next resume replays every direct message it has not acknowledged.
    pub(super) inbox_acked: Option<StreamPosition>,
    pub(super) connected_at: u64,
    /// The presence entry of each joined room (`<conn_key>.<n>`: a fresh one per join, so
    /// a lingering leave of an earlier join never removes a later one).
    pub(super) members: BTreeMap<Arc<str>, String>,
    /// Joins so far, naming each join's presence entry (wraps after 2^32: the entry of a
    /// join that long ago is gone).
    joins: u32,
    /// Unix ms by which the session record is saved (see [`SAVE_DELAY`]); none when the
    /// saved record is current.
    pub(super) save_due: Option<NonZeroU64>,
}

/// A join or a leave saves the session record this long after it (a resume after the
/// node died starts from that record), not at once: one save then covers every change
/// of the moment, and a connection that joins, leaves and closes within it (a reconnect
/// storm, a page load) saves once, at the close. A node that dies loses what its sessions
/// changed in the last `SAVE_DELAY` from their records; a resume's `positions` still name
/// those rooms (`/client.js` sends every room it joined).
pub const SAVE_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

impl Session {
    /// A new session of `identity`, writing to `queue`, registered on the node as `id`
    /// (with `resume_token`, the one it will give the client).
    pub fn new(
        node: Arc<Node>,
        id: ConnId,
        identity: Identity,
        queue: OutboundQueue,
        resume_token: Hex<16>,
    ) -> Session {
        Session {
            node,
            id,
            session: Hex::random(),
            resume_token,
            inbox: protocol::inbox_of(&identity.user).into(),
            identity,
            warned: false,
            queue,
            rooms: BTreeMap::new(),
            inbox_pending: true,
            resumed: false,
            inbox_head: None,
            inbox_acked: None,
            connected_at: crate::engine::now_ms(),
            members: BTreeMap::new(),
            joins: 0,
            save_due: None,
        }
    }

    /// `node/conn`: the connection's name in presence entries. Made when needed (a join
    /// or a leave) rather than kept: every connection would carry it for its life.
    fn conn_key(&self) -> String {
        format!("{}/{}", self.node.id, self.id)
    }

    /// The user of the session.
    pub fn user(&self) -> &str {
        &self.identity.user
    }

    /// Sends `welcome` and subscribes the inbox, holding its messages back until the
    /// client's inbox position is known (see [`RESUME_GRACE`](super::RESUME_GRACE)); then
    /// joins the rooms the backend's connect hook named. Returns their replays, for the
    /// socket loop to stream.
    pub async fn welcome(&mut self, extras: ConnectAnswer) -> Vec<super::catchup::Replay> {
        let welcome = push::Welcome {
            kind: "welcome".into(),
            protocol: protocol::PROTOCOL_VERSION,
            session: self.session.to_string(),
            user: self.identity.user.clone(),
            resume_token: self.resume_token.to_string(),
            heartbeat_ms: self.node.config.heartbeat.interval.as_millis() as u64,
            node: self.node.id.clone(),
            expires_at: self.identity.expires_at.map(|s| s * 1000),
            rooms: extras.rooms.clone(),
            data: extras.data,
        };
        self.queue.frame(protocol::to_json(&welcome));
        self.queue.push(Outbound::BeginCatchup(self.inbox.clone()));
        let inbox = self.inbox.clone();
        match self.subscribe(&inbox).await {
            Ok(head) => self.inbox_head = head.map(Box::new),
            Err(e) => {
                let (gate, user) = (&self.node.connection_failure_log, &self.identity.user);
                warn_gated!(gate, %user, error = %e, "inbox subscribe failed");
                self.queue.frame(protocol::error_frame(
                    None,
                    protocol::ErrorCode::Unavailable,
                    "inbox unavailable; resume later to receive direct messages",
                ));
            }
        }
        let mut replays = Vec::new();
        for room in extras.rooms {
            match self.join_for_backend(&room).await {
                Ok(replay) => replays.push(replay),
                Err(e) => {
                    let (gate, user) = (&self.node.connection_failure_log, &self.identity.user);
                    let error = &e.message;
                    warn_gated!(gate, %user, %room, %error, "connect hook room not joined");
                    self.queue.frame(protocol::error_frame(
                        None,
                        e.code,
                        &format!("{room}: {}", e.message),
                    ));
                }
            }
        }
        replays
    }

    /// Joins a room the backend granted (connect hook): no `since`, send as the namespace
    /// allows.
    async fn join_for_backend(
        &mut self,
        room: &str,
    ) -> Result<super::catchup::Replay, super::cmd::Refusal> {
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
        Ok(caught.replay)
    }

    /// Subscribes this connection to a room locally and, for the first local subscriber,
    /// in the engine; returns the room's head if the engine read one meanwhile (see
    /// [`Broker::subscribe`](crate::engine::Broker::subscribe)). Undone on failure.
    pub(super) async fn subscribe(
        &self,
        room: &Arc<str>,
    ) -> Result<Option<HistoryPage>, EngineError> {
        if self.node.hub.subscribe(room, self.id, self.queue.clone()) {
            self.update_room_gauge();
        }
        // Every joiner waits for the node's subscription to be live (not only the first):
        // reading history before that could miss a message.
        match self.node.engine.subscribe(room).await {
            Ok(head) => Ok(head),
            Err(e) => {
                self.unsubscribe(room).await;
                Err(e)
            }
        }
    }

    async fn unsubscribe(&self, room: &str) {
        if self.node.hub.unsubscribe(room, self.id) {
            self.update_room_gauge();
            if let Err(e) = self.node.engine.unsubscribe(room).await {
                let gate = &self.node.connection_failure_log;
                warn_gated!(gate, room, error = %e, "engine unsubscribe failed");
            }
        }
    }

    fn update_room_gauge(&self) {
        // The node's own control room is not a chat room.
        let hub = &self.node.hub;
        let own = usize::from(hub.has_subscribers(crate::control::CONTROL_ROOM));
        let rooms = hub.room_count().saturating_sub(own);
        self.node.metrics.rooms.set(rooms as i64);
    }

    /// Starts holding a room's live messages, subscribes and marks presence (taking back
    /// this connection's lingering entry if it left the room a moment ago); returns the
    /// head the engine read while subscribing or marking presence, if any (see
    /// [`Engine::enter`](crate::engine::Engine::enter)). On failure nothing of it remains.
    pub(super) async fn attach(
        &mut self,
        room: &Arc<str>,
    ) -> Result<Option<HistoryPage>, EngineError> {
        self.queue.push(Outbound::BeginCatchup(room.clone()));
        self.joins = self.joins.wrapping_add(1);
        let conn_key = self.conn_key();
        let fresh = format!("{conn_key}.{}", self.joins);
        let attached = async {
            let head = self.subscribe(room).await?;
            if let Some(member) = self.node.linger.rejoin(room, &conn_key) {
                return Ok((member, head));
            }
            let entered = self
                .node
                .engine
                .enter(room, &self.identity.user, &fresh)
                .await;
            match entered {
                Ok(read) => Ok((fresh, read.or(head))),
                Err(e) => {
                    self.unsubscribe(room).await;
                    Err(e)
                }
            }
        }
        .await;
        match attached {
            Ok((member, head)) => {
                self.members.insert(room.clone(), member);
                Ok(head)
            }
            Err(e) => {
                self.queue.push(Outbound::Forget(room.clone()));
                Err(e)
            }
        }
    }

    /// Takes the connection out of a room: the writer forgets it, the node unsubscribes
    /// if it was the last local member, presence announces the leave.
    pub(super) async fn detach(&mut self, room: &Arc<str>) {
        self.rooms.remove(room);
        self.queue.push(Outbound::Forget(room.clone()));
        let member = self.members.remove(room);
        self.release(room, member).await;
    }

    /// The engine side of leaving a room (the writer is not involved): unsubscribes, and
    /// hands the presence entry to the linger (its leave is announced a moment later).
    async fn release(&self, room: &Arc<str>, member: Option<String>) {
        self.unsubscribe(room).await;
        if let Some(member) = member {
            self.node
                .linger
                .leave(room, &self.identity.user, &self.conn_key(), member)
                .await;
        }
    }

    /// Tells the backend this connection opened (`connected` event).
    pub fn notify_connected(&self) {
        if let Some(events) = &self.node.hooks.events {
            events.notify(crate::hooks::events::Event::Connected {
                user: self.identity.user.clone(),
                session: self.session.to_string(),
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
                session: self.session.to_string(),
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
                    self.persist_soon();
                }
            }
        }
    }

    /// After the socket closed: leaves every room and the inbox, and stores the session
    /// for a resume, starting from what the writer actually `written` per room. The rooms
    /// are left concurrently: with Redis unreachable each step waits for its deadline,
    /// and a close must not take rooms × deadline.
    pub async fn close(&mut self, written: &HashMap<Arc<str>, StreamPosition>) {
        let members = std::mem::take(&mut self.members);
        let leaving = self.rooms.keys().map(|room| {
            let member = members.get(room).cloned();
            self.release(room, member)
        });
        let inbox = self.inbox.clone();
        futures_util::future::join(
            futures_util::future::join_all(leaving),
            self.unsubscribe(&inbox),
        )
        .await;
        // A session a resume took before this save is not stored again, and so is not one
        // of the user's ended sessions here (`sessions.keptPerUser`); nor is one closed
        // because a resume took its token (which may have found nothing stored to take).
        if self.queue.close_reason() == Some(crate::disconnect::SESSION_RESUMED) {
            return;
        }
        if self.persist(written, false).await != Some(SaveOutcome::Taken) {
            let user = &self.identity.user;
            self.node.session_ended(user, self.resume_token).await;
        }
    }

    /// This device has the inbox up to `at`: its own position and the user's cursor
    /// move on (within an epoch never back; another epoch replaces them).
    pub(super) async fn acknowledge_inbox(
        &mut self,
        at: StreamPosition,
    ) -> Result<(), EngineError> {
        match &mut self.inbox_acked {
            Some(cur) if cur.epoch == at.epoch => cur.seq = cur.seq.max(at.seq),
            _ => self.inbox_acked = Some(at.clone()),
        }
        self.node.engine.ack_inbox(&self.identity.user, &at).await
    }

    /// Saves the session within [`SAVE_DELAY`] (the socket loop's timer runs
    /// [`on_deadline`](Self::on_deadline)); a save already due stays due, so a session that
    /// keeps changing is not put off.
    pub(super) fn persist_soon(&mut self) {
        if self.save_due.is_none() {
            self.save_due =
                NonZeroU64::new(crate::engine::now_ms() + SAVE_DELAY.as_millis() as u64);
        }
    }

    /// Saves the session for a later resume now; `written` (the writer's positions at the
    /// end) overrides the positions known at join time, which are where each room's replay
    /// started: a room whose replay never reached the writer is saved where the client
    /// stood. The inbox's position is the acknowledged one, not the written one: bytes
    /// reaching a socket are not a read. `open`: saved by a connection that goes on (not
    /// its close), so a resume of it closes this connection. Returns what the store did
    /// (`None`: it failed).
    pub(super) async fn persist(
        &mut self,
        written: &HashMap<Arc<str>, StreamPosition>,
        open: bool,
    ) -> Option<SaveOutcome> {
        self.save_due = None;
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
                let grant = StoredGrant {
                    send: joined.member.send,
                    expires_at: joined.member.expires_at?,
                    kid: joined.member.kid.as_deref().map(str::to_string),
                };
                Some((room.to_string(), grant))
            })
            .collect();
        if let Some(at) = &self.inbox_acked {
            rooms.insert(self.inbox.to_string(), at.clone());
        }
        let record = SessionRecord {
            user: self.identity.user.clone(),
            node: self.node.id.clone(),
            rooms,
            connected_at: self.connected_at,
            last_seen: crate::engine::now_ms(),
            grants,
            open,
        };
        let token = self.resume_token.to_string();
        match self.node.engine.save_session(&token, &record).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                let (gate, user) = (&self.node.connection_failure_log, &self.identity.user);
                warn_gated!(gate, %user, error = %e, "session not saved");
                None
            }
        }
    }
}

/// A message id for a message sent without one: 12 random bytes in hex.
pub(crate) fn new_msg_id() -> String {
    Hex::<12>::random().to_string()
}

/// `N` random bytes, shown as lowercase hex: a session's id and resume token, generated
/// message ids. A session keeps its id and token as bytes rather than as strings: two
/// strings were two allocations (48 bytes) and 48 bytes of the socket loop's state that
/// every connection carried.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex<const N: usize>(pub(super) [u8; N]);

impl<const N: usize> Hex<N> {
    /// Fresh random bytes.
    pub fn random() -> Self {
        Hex(rand::random())
    }

    /// The bytes `text` spells in `2 * N` hex digits (either case), if it does.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 2 * N {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; N];
        for (b, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            *b = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Hex(out))
    }
}

impl<const N: usize> std::fmt::Display for Hex<N> {
    /// One `write_str` of all the digits: a `{:02x}` per byte went through the formatter's
    /// padding and grew the string a byte pair at a time (0.8% of a churn's CPU, the
    /// session's key made at every save).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        const { assert!(N <= 32, "Hex is for ids of at most 32 bytes") };
        let mut buf = [0u8; 64];
        for (pair, b) in buf.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        // Only ASCII digits were written.
        f.write_str(std::str::from_utf8(&buf[..2 * N]).map_err(|_| std::fmt::Error)?)
    }
}

impl<const N: usize> std::fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
