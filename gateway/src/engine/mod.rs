//! Engine: the broker, history, presence and session store behind the hub.
//!
//! `memory` serves a single node; `redis` (a later module) serves a cluster. Both deliver
//! published messages to the node's [`Hub`](crate::hub::Hub) and pass the same
//! conformance suite (`engine::conformance`).

mod history;
pub mod memory;
pub mod redis;
pub mod seen;

pub use history::{cut_page, page, History, HistoryPage, HistoryQuery, EMPTY_EPOCH};

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

use crate::protocol::push::MsgContent;
use crate::protocol::StreamPosition;
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A message ready to go out: its room, its seq and the serialised `msg` frame.
#[derive(Debug)]
pub struct Envelope {
    /// Room (or inbox) the message belongs to.
    pub room: Arc<str>,
    /// Position in the room.
    pub seq: u64,
    /// Epoch the seq belongs to.
    pub epoch: Arc<str>,
    /// Append time, Unix ms (for the end-to-end delivery latency).
    pub ts: u64,
    /// W3C trace context of the send, if traced.
    pub traceparent: Option<Arc<str>>,
    /// The complete `msg` frame, serialised once.
    pub frame: Utf8Bytes,
    /// `frame` as the WebSocket text frame that carries it, header included: `frame` is
    /// its tail, in the same allocation (see [`Envelope::new`]).
    wire: Bytes,
}

/// A message to publish.
#[derive(Debug)]
pub struct Publish {
    /// Target room or `user:<id>` inbox.
    pub room: Arc<str>,
    /// Sender's user id.
    pub from: String,
    /// Client message id; de-duplicated per (room, sender) within the dedup window.
    pub msg_id: String,
    /// The body, kept as the raw JSON the client sent.
    pub body: Box<RawValue>,
    /// W3C trace context of the send.
    pub traceparent: Option<String>,
}

impl Publish {
    /// What its `msg` frame says besides the position.
    pub fn content(&self) -> MsgContent<'_> {
        MsgContent {
            room: &self.room,
            msg_id: &self.msg_id,
            from: &self.from,
            body: &self.body,
            traceparent: self.trace(),
        }
    }

    /// The send's trace context if it is a W3C `traceparent`. Every engine reads it
    /// through here, so whatever a caller passed (an API request's header, say) reaches
    /// no frame, pub/sub payload or envelope unless it is one.
    pub fn trace(&self) -> Option<&str> {
        self.traceparent
            .as_deref()
            .filter(|t| crate::protocol::valid_traceparent(t))
    }
}

/// Outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Seq and epoch the message got (the original ones for a duplicate).
    pub at: StreamPosition,
    /// True when the msg id was seen before: nothing was appended or delivered.
    pub duplicate: bool,
    /// True in a namespace that keeps no history: delivered live, not stored (`at` is
    /// meaningless then).
    pub ephemeral: bool,
    /// Server time of the append, Unix ms (0 for a duplicate).
    pub ts: u64,
}

impl Published {
    /// The outcome of an ephemeral message.
    pub fn ephemeral() -> Published {
        Published {
            at: StreamPosition::new("", 0),
            duplicate: false,
            ephemeral: true,
            ts: now_ms(),
        }
    }
}

impl Envelope {
    /// A message of `room` at `seq` in `epoch`, appended at `ts` (Unix ms; 0 if not
    /// known), and its `msg` frame. The frame is laid out once as the WebSocket text
    /// frame that carries it ([`wire`](Self::wire)): a fan-out sends those same bytes to
    /// every member, each with one `send` of one buffer. (A header and the frame as two
    /// buffers of a `sendmsg` cost ~0.3 µs a delivery more at 50 messages/s, perf: the
    /// kernel copies in and walks the iovec.)
    pub fn new(
        room: Arc<str>,
        seq: u64,
        epoch: Arc<str>,
        ts: u64,
        traceparent: Option<Arc<str>>,
        frame: &str,
    ) -> Envelope {
        let (wire, frame) = crate::outbound::text_frame(frame);
        Envelope {
            room,
            seq,
            epoch,
            ts,
            traceparent,
            frame,
            wire,
        }
    }

    /// An ephemeral message: seq 0 (the writer neither deduplicates nor tracks it).
    pub fn ephemeral(msg: &Publish, ts: u64) -> Envelope {
        let frame = crate::protocol::push::ephemeral_msg_frame(msg.content(), ts);
        let trace = msg.trace().map(Arc::from);
        Envelope::new(msg.room.clone(), 0, "".into(), ts, trace, &frame)
    }

    /// [`frame`](Self::frame) as a whole WebSocket text frame: what goes on the socket.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// A message of `room` at `seq` in epoch "e", its frame as given (tests).
    #[cfg(test)]
    pub fn for_test(room: &str, seq: u64, frame: String) -> Arc<Envelope> {
        Arc::new(Envelope::new(room.into(), seq, "e".into(), 0, None, &frame))
    }
}

/// Retention of a room: its namespace's, else the inbox or history default.
pub fn retention<'a>(
    namespaces: &'a crate::config::Namespaces,
    room: &str,
    history: &'a crate::config::RetentionConfig,
    inbox: &'a crate::config::RetentionConfig,
) -> &'a crate::config::RetentionConfig {
    match &namespaces.of(room).retention {
        Some(r) => r,
        None if crate::protocol::is_inbox(room) => inbox,
        None => history,
    }
}

/// What a disconnected session leaves behind for a resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// User of the session.
    pub user: String,
    /// Node that served it.
    pub node: String,
    /// Joined rooms (and the inbox) and the last position delivered in each.
    pub rooms: BTreeMap<String, StreamPosition>,
    /// Unix ms of the connect.
    pub connected_at: u64,
    /// Unix ms of the last update.
    pub last_seen: u64,
    /// Rooms joined with a subscription token: what it granted, until when, so a resume
    /// keeps the membership until the token's expiry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<String, StoredGrant>,
    /// Saved while its connection was open (false: by the connection's close, or by a
    /// version that did not say). A resume of such a session closes that connection, on
    /// whichever node it is: its client has moved on (4409, `session resumed elsewhere`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
}

/// What [`Sessions::save_session`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Stored for `sessions.resumeTtl`.
    Stored,
    /// Not stored: a resume took the token (on any node) since the last save.
    Taken,
}

/// What [`Sessions::take_session`] found under a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakenSession {
    /// The user's session, removed from the store.
    Taken(SessionRecord),
    /// Nothing: never saved, taken already, or expired.
    Missing,
    /// Another user's session, left in the store as it was (its expiry unchanged).
    OtherUsers,
}

impl TakenSession {
    /// The record, if it was the user's.
    pub fn record(self) -> Option<SessionRecord> {
        match self {
            TakenSession::Taken(r) => Some(r),
            _ => None,
        }
    }
}

/// A subscription token's grant, kept in a session record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredGrant {
    /// It allowed sending.
    pub send: bool,
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
    /// The JWKS key that signed it: a resume after the key's removal does not count it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// Engine failures, mapped to protocol error codes by the connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backing store cannot be reached; the client may retry.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A write whose outcome is unknown: the store was asked but did not answer in time
    /// (it may have done it). Retrying with the same msg id is safe (de-duplicated).
    #[error("outcome unknown: {0}")]
    UnknownOutcome(String),
    /// Anything else.
    #[error("engine error: {0}")]
    Internal(String),
    /// The sender's quota in the recipient's inbox is used up (`dmQuota`).
    #[error("{0}")]
    Quota(String),
}

/// Delivers published messages to every node with subscribers (centrifuge's Broker).
#[async_trait]
pub trait Broker: Send + Sync {
    /// Appends to the room's history (deduplicating the msg id) and delivers it to every
    /// node with subscribers, in seq order.
    async fn publish(&self, msg: Publish) -> Result<Published, EngineError>;
    /// This node wants the room's messages. Called by every local joiner (registered in
    /// the hub first); returns once messages published from now on will reach this node's
    /// hub. An engine that read the room's head (epoch, top, first; no messages) while
    /// subscribing, at a point from which every later message reaches the hub, returns it:
    /// the caller's catch-up may start there instead of reading the head again (the Redis
    /// engine reads an inbox's when it starts delivering it: one round trip per connect
    /// fewer).
    async fn subscribe(&self, room: &str) -> Result<Option<HistoryPage>, EngineError>;
    /// This node no longer wants the room's messages (last local subscriber left).
    async fn unsubscribe(&self, room: &str) -> Result<(), EngineError>;
}

/// A connection leaving a room's presence ([`PresenceManager::presence_leave_all`]).
#[derive(Clone, Copy, Debug)]
pub struct PresenceLeave<'a> {
    /// The room.
    pub room: &'a str,
    /// The connection's user.
    pub user: &'a str,
    /// The presence entry the connection's join made.
    pub conn: &'a str,
}

/// Some of the users present in a room, and how many there are
/// ([`PresenceManager::presence_upto`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Present {
    /// Users present, sorted: all of them, or as many as asked for.
    pub users: Vec<String>,
    /// How many users are present.
    pub count: usize,
}

/// Who is in a room (centrifuge's PresenceManager).
#[async_trait]
pub trait PresenceManager: Send + Sync {
    /// Marks a connection of `user` present in a room; announces the user's first one.
    async fn presence_join(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError>;
    /// Removes a connection from a room; announces the user's last one leaving.
    async fn presence_leave(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError>;
    /// Removes many connections from their rooms, each as [`presence_leave`] would (the
    /// linger's due leaves): an engine may take them in fewer round trips than one each.
    /// Returns the first error. A leave that failed (with the others of its round trip,
    /// where the engine batches) leaves its entry to expire on its own.
    ///
    /// [`presence_leave`]: PresenceManager::presence_leave
    async fn presence_leave_all(&self, leaves: &[PresenceLeave<'_>]) -> Result<(), EngineError> {
        let each = leaves
            .iter()
            .map(|l| self.presence_leave(l.room, l.user, l.conn));
        let done = futures_util::future::join_all(each).await;
        done.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }
    /// Users present in a room, sorted: all of them, however many (tests: every caller
    /// in the product bounds its listing with [`presence_upto`]).
    ///
    /// [`presence_upto`]: PresenceManager::presence_upto
    async fn presence(&self, room: &str) -> Result<Vec<String>, EngineError> {
        Ok(self.presence_upto(room, usize::MAX).await?.users)
    }
    /// At most `limit` of the users present in a room, sorted (which ones, when there are
    /// more, is the engine's choice), and how many there are. What a call costs the
    /// store grows with `limit`, not with the room: a client's `presence` of a room of
    /// 100,000 users took Redis 50 ms when it listed them all.
    async fn presence_upto(&self, room: &str, limit: usize) -> Result<Present, EngineError>;
    /// Whether `user` is present in a room.
    async fn is_present(&self, room: &str, user: &str) -> Result<bool, EngineError>;
    /// Rooms with someone present and how many users each, at most `limit`, by name.
    async fn active_rooms(&self, limit: usize) -> Result<Vec<(String, usize)>, EngineError>;
}

/// Sessions a client can resume on any node, and how far each user's inbox was
/// acknowledged.
#[async_trait]
pub trait Sessions: Send + Sync {
    /// Stores (or refreshes) a session under its resume token, unless a resume took the
    /// token since: a connection that ends after its client resumed elsewhere (its socket
    /// half-open until the heartbeat gave up) must not make the token good again.
    async fn save_session(
        &self,
        token: &str,
        session: &SessionRecord,
    ) -> Result<SaveOutcome, EngineError>;
    /// Removes and returns `user`'s session, if it exists and has not expired. Another
    /// user's is left in place in the same step: a resume with a stolen or mistyped token
    /// can neither take it from its owner nor extend its life. What is left under the
    /// token until the session would have expired is a mark that it was taken: a token
    /// resumes once.
    async fn take_session(&self, token: &str, user: &str) -> Result<TakenSession, EngineError>;
    /// Deletes `user`'s session stored under `token` (another user's stays), leaving no
    /// mark: for an ended connection's session past `sessions.keptPerUser`, which nothing
    /// saves again, so that its drop frees its key instead of holding a mark for
    /// `sessions.resumeTtl`.
    async fn drop_session(&self, token: &str, user: &str) -> Result<(), EngineError>;
    /// Tests only: the session stored under `token`, left in place (`None`: none, or one
    /// a resume took).
    #[cfg(any(test, feature = "testing"))]
    async fn peek_session_for_test(&self, token: &str) -> Option<SessionRecord>;
    /// The user's inbox cursor: the highest position any of the user's devices
    /// acknowledged (where a connection without a session starts its inbox replay).
    async fn inbox_cursor(&self, user: &str) -> Result<Option<StreamPosition>, EngineError>;
    /// Advances the user's inbox cursor: never back within an epoch; a position of
    /// another epoch replaces it (the inbox started a new epoch).
    async fn ack_inbox(&self, user: &str, at: &StreamPosition) -> Result<(), EngineError>;
}

/// The cluster's nodes: their load (for rebalancing), the admission counter and the
/// users' room starts.
#[async_trait]
pub trait Nodes: Send + Sync {
    /// Publishes this node's load in the node registry (expires unless refreshed).
    async fn report_node(&self, report: &NodeReport) -> Result<(), EngineError>;
    /// Nodes whose reports have not expired, sorted by id.
    async fn nodes(&self) -> Result<Vec<NodeReport>, EngineError>;
    /// Counts one admission in the current second against a cluster-wide `rate`;
    /// `None` when the engine has no cluster-wide counter (the node counts itself).
    async fn admit(&self, rate: u32) -> Result<Option<bool>, EngineError>;
    /// Takes one of `user`'s room starts (`limits.newRoomsPerHour`) from the cluster's
    /// token bucket of them (`burst` tokens refilling at `rate` a second) and returns what
    /// it holds after: below 1 the user may start no more for now, below 0 the cluster's
    /// nodes together started more than it held (never below `-burst`). `None` when the
    /// engine keeps no cluster-wide bucket (the node's own is the whole cluster's).
    async fn start_room(
        &self,
        user: &str,
        rate: f64,
        burst: u32,
    ) -> Result<Option<f64>, EngineError>;
}

/// Everything a gateway node needs from its engine. Both engines pass one conformance
/// suite (`engine::conformance`).
///
/// **The epoch rule.** A room's (or inbox's) messages are numbered within an epoch. The
/// store starts a new epoch for a room when it has none (a room never written, or one the
/// store lost) and when its stored top is *below* what this node has seen of the same
/// epoch ([`seen::SeenTops`]): a store restored from an older snapshot or failed over to a
/// lagging replica. Numbering on in the old epoch would hand out seqs clients already
/// have, and every writer and client would drop those messages as duplicates; a new epoch
/// makes clients see the gap (`recovered: false`, a new `epoch` in `msg`) instead.
#[async_trait]
pub trait Engine: Broker + History + PresenceManager + Sessions + Nodes + 'static {
    /// Whether the engine can serve requests now (readiness).
    fn healthy(&self) -> bool;

    /// Marks a connection present in a room it has just subscribed to (as
    /// [`PresenceManager::presence_join`]) and returns the room's head if the engine read
    /// it in the same step: read after the subscription, it is where the joiner's catch-up
    /// may start instead of reading it again (the Redis engine: one script for both, one
    /// round trip per join fewer). None: the caller reads the head itself.
    async fn enter(
        &self,
        room: &str,
        user: &str,
        conn: &str,
    ) -> Result<Option<HistoryPage>, EngineError> {
        self.presence_join(room, user, conn).await.map(|()| None)
    }

    /// Tests only: makes the store forget a room's messages after `keep` (a restore from
    /// an older snapshot), or the whole room with `None` (a store that lost it), without
    /// telling the node — as a real store would not.
    #[cfg(any(test, feature = "testing"))]
    async fn rewind_for_test(&self, room: &str, keep: Option<u64>);
}

/// A node's entry in the node registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node id.
    pub id: String,
    /// Open connections.
    pub connections: u64,
    /// Whether the node is draining.
    pub draining: bool,
    /// Unix ms of the report.
    pub heartbeat: u64,
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random epoch id.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
