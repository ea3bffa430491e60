//! Engine: the broker, history, presence and session store behind the hub.
//!
//! `memory` serves a single node; `redis` (a later module) serves a cluster. Both deliver
//! published messages to the node's [`Hub`](crate::hub::Hub) and pass the same
//! conformance suite (`engine::conformance`).

pub mod memory;
pub mod redis;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

use crate::protocol::push::MsgContent;
use crate::protocol::StreamPosition;
use async_trait::async_trait;
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
            traceparent: self.traceparent.as_deref(),
        }
    }
}

/// Outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Seq and epoch the message got (the original ones for a duplicate).
    pub at: StreamPosition,
    /// True when the msg id was seen before: nothing was appended or delivered.
    pub duplicate: bool,
}

/// Which part of a room's history to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only seq > since, oldest first.
    pub since: Option<u64>,
    /// Only seq < before; without `since`, the newest `limit` of those.
    pub before: Option<u64>,
    /// At most this many messages.
    pub limit: usize,
}

/// A slice of history plus where the retained history starts and ends.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Epoch of the room.
    pub epoch: Arc<str>,
    /// Highest seq assigned so far (0 when none).
    pub top: u64,
    /// Lowest seq still retained (`top + 1` when nothing is retained).
    pub first: u64,
    /// Messages, in ascending seq.
    pub messages: Vec<Arc<Envelope>>,
}

impl HistoryPage {
    /// Whether everything after `seq` (in `epoch`) is still retained.
    pub fn covers(&self, seq: u64, epoch: Option<&str>) -> bool {
        let same_epoch = epoch.is_none_or(|e| e == &*self.epoch);
        same_epoch && seq <= self.top && self.first <= seq + 1
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
}

/// Engine failures, mapped to protocol error codes by the connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backing store cannot be reached; the client may retry.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("engine error: {0}")]
    Internal(String),
}

/// Delivers published messages to every node with subscribers (centrifuge's Broker).
#[async_trait]
pub trait Broker: Send + Sync {
    /// Appends to the room's history (deduplicating the msg id) and delivers it to every
    /// node with subscribers, in seq order.
    async fn publish(&self, msg: Publish) -> Result<Published, EngineError>;
    /// This node wants the room's messages. Called by every local joiner; returns once
    /// messages published from now on will reach this node's hub.
    async fn subscribe(&self, room: &str) -> Result<(), EngineError>;
    /// This node no longer wants the room's messages (last local subscriber left).
    async fn unsubscribe(&self, room: &str) -> Result<(), EngineError>;
}

/// Stored messages of rooms and inboxes.
#[async_trait]
pub trait History: Send + Sync {
    /// Reads history.
    async fn history(&self, room: &str, query: HistoryQuery) -> Result<HistoryPage, EngineError>;
}

/// Who is in a room (centrifuge's PresenceManager).
#[async_trait]
pub trait PresenceManager: Send + Sync {
    /// Marks a connection of `user` present in a room; announces the user's first one.
    async fn presence_join(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError>;
    /// Removes a connection from a room; announces the user's last one leaving.
    async fn presence_leave(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError>;
    /// Users present in a room, sorted.
    async fn presence(&self, room: &str) -> Result<Vec<String>, EngineError>;
}

/// Sessions a client can resume on any node, and how far each user's inbox was read.
#[async_trait]
pub trait Sessions: Send + Sync {
    /// Stores (or refreshes) a session under its resume token.
    async fn save_session(&self, token: &str, session: &SessionRecord) -> Result<(), EngineError>;
    /// Removes and returns a session, if it exists and has not expired.
    async fn take_session(&self, token: &str) -> Result<Option<SessionRecord>, EngineError>;
    /// Highest inbox seq delivered to any connection of the user.
    async fn inbox_cursor(&self, user: &str) -> Result<u64, EngineError>;
    /// Advances the user's inbox cursor (never moves it back).
    async fn ack_inbox(&self, user: &str, seq: u64) -> Result<(), EngineError>;
}

/// The cluster's nodes: their load (for rebalancing) and the admission counter.
#[async_trait]
pub trait Nodes: Send + Sync {
    /// Publishes this node's load in the node registry (expires unless refreshed).
    async fn report_node(&self, report: &NodeReport) -> Result<(), EngineError>;
    /// Nodes whose reports have not expired, sorted by id.
    async fn nodes(&self) -> Result<Vec<NodeReport>, EngineError>;
    /// Counts one admission in the current second against a cluster-wide `rate`;
    /// `None` when the engine has no cluster-wide counter (the node counts itself).
    async fn admit(&self, rate: u32) -> Result<Option<bool>, EngineError>;
}

/// Everything a gateway node needs from its engine. Both engines pass one conformance
/// suite (`engine::conformance`).
pub trait Engine: Broker + History + PresenceManager + Sessions + Nodes + 'static {
    /// Whether the engine can serve requests now (readiness).
    fn healthy(&self) -> bool;
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
