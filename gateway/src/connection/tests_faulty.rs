//! A test engine: the memory engine, with faults on demand and, like the Redis engine, an
//! inbox's head handed back by the subscription that starts delivering it.

use crate::config::Config;
use crate::engine::memory::MemoryEngine;
use crate::engine::{
    Broker, Engine, EngineError, History, HistoryPage, HistoryQuery, NodeReport, Nodes,
    PresenceManager, Present, Publish, Published, SaveOutcome, SessionRecord, Sessions,
    TakenSession,
};
use crate::hub::Hub;
use crate::node::Node;
use crate::protocol::StreamPosition;
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The memory engine, with faults on demand.
pub(super) struct Faulty {
    inner: MemoryEngine,
    /// History reads of this room fail (engine unavailable).
    history_of: Mutex<Option<String>>,
    /// Presence lookups in this room fail (engine unavailable).
    presence_of: Mutex<Option<String>>,
    /// Publishes fail as if Redis had not answered.
    pub(super) publish_unknown: AtomicBool,
    /// An inbox's subscription hands back the inbox's head, as the Redis engine's does.
    pub(super) inbox_heads: AtomicBool,
    /// Heads of inboxes read by their connections (`history` without a range).
    pub(super) inbox_head_reads: AtomicUsize,
}

impl Faulty {
    pub(super) fn node(config: Config) -> (Arc<Node>, Arc<Faulty>) {
        let slot: Arc<Mutex<Option<Arc<Faulty>>>> = Arc::default();
        let keep = slot.clone();
        let engine_config = config.clone();
        let node = Node::with_engine(config, move |hub: Arc<Hub>| {
            let f = Arc::new(Faulty {
                inner: MemoryEngine::new(hub, &engine_config),
                history_of: Mutex::new(None),
                presence_of: Mutex::new(None),
                publish_unknown: AtomicBool::new(false),
                inbox_heads: AtomicBool::new(false),
                inbox_head_reads: AtomicUsize::new(0),
            });
            *keep.lock().unwrap_or_else(|p| p.into_inner()) = Some(f.clone());
            f
        })
        .expect("node");
        let faulty = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("engine made");
        (node, faulty)
    }

    pub(super) fn fail_history_of(&self, room: Option<&str>) {
        *self.history_of.lock().unwrap_or_else(|p| p.into_inner()) = room.map(Into::into);
    }

    pub(super) fn fail_presence_of(&self, room: Option<&str>) {
        *self.presence_of.lock().unwrap_or_else(|p| p.into_inner()) = room.map(Into::into);
    }
}

#[async_trait]
impl Broker for Faulty {
    async fn publish(&self, msg: Publish) -> Result<Published, EngineError> {
        if self.publish_unknown.load(Ordering::Relaxed) {
            return Err(EngineError::UnknownOutcome("no answer in time".into()));
        }
        self.inner.publish(msg).await
    }
    async fn subscribe(&self, room: &str) -> Result<Option<HistoryPage>, EngineError> {
        let head = self.inner.subscribe(room).await?;
        if crate::protocol::is_inbox(room) && self.inbox_heads.load(Ordering::Relaxed) {
            // The memory engine delivers at once: its head now is one after the caller
            // registered in the hub, what the trait asks of a head handed back.
            return Ok(Some(
                self.inner.history(room, HistoryQuery::default()).await?,
            ));
        }
        Ok(head)
    }
    async fn unsubscribe(&self, room: &str) -> Result<(), EngineError> {
        self.inner.unsubscribe(room).await
    }
}

/// The fault injected for `room`, if `failing` names it (the engine unavailable).
fn injected(failing: &Mutex<Option<String>>, room: &str) -> Result<(), EngineError> {
    let failing = failing.lock().unwrap_or_else(|p| p.into_inner());
    match failing.as_deref() == Some(room) {
        true => Err(EngineError::Unavailable("injected".into())),
        false => Ok(()),
    }
}

#[async_trait]
impl History for Faulty {
    async fn history(&self, room: &str, q: HistoryQuery) -> Result<HistoryPage, EngineError> {
        injected(&self.history_of, room)?;
        if crate::protocol::is_inbox(room) && q == HistoryQuery::default() {
            self.inbox_head_reads.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.history(room, q).await
    }
}

#[async_trait]
impl PresenceManager for Faulty {
    async fn presence_join(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        self.inner.presence_join(room, user, conn).await
    }
    async fn presence_leave(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        self.inner.presence_leave(room, user, conn).await
    }
    async fn presence_upto(&self, room: &str, limit: usize) -> Result<Present, EngineError> {
        self.inner.presence_upto(room, limit).await
    }
    async fn is_present(&self, room: &str, user: &str) -> Result<bool, EngineError> {
        injected(&self.presence_of, room)?;
        self.inner.is_present(room, user).await
    }
    async fn active_rooms(&self, limit: usize) -> Result<Vec<(String, usize)>, EngineError> {
        self.inner.active_rooms(limit).await
    }
}

#[async_trait]
impl Sessions for Faulty {
    async fn save_session(
        &self,
        token: &str,
        s: &SessionRecord,
    ) -> Result<SaveOutcome, EngineError> {
        self.inner.save_session(token, s).await
    }
    async fn take_session(&self, token: &str, user: &str) -> Result<TakenSession, EngineError> {
        self.inner.take_session(token, user).await
    }
    async fn drop_session(&self, token: &str, user: &str) -> Result<(), EngineError> {
        self.inner.drop_session(token, user).await
    }
    async fn peek_session_for_test(&self, token: &str) -> Option<SessionRecord> {
        self.inner.peek_session_for_test(token).await
    }
    async fn inbox_cursor(&self, user: &str) -> Result<Option<StreamPosition>, EngineError> {
        self.inner.inbox_cursor(user).await
    }
    async fn ack_inbox(&self, user: &str, at: &StreamPosition) -> Result<(), EngineError> {
        self.inner.ack_inbox(user, at).await
    }
}

#[async_trait]
impl Nodes for Faulty {
    async fn report_node(&self, r: &NodeReport) -> Result<(), EngineError> {
        self.inner.report_node(r).await
    }
    async fn nodes(&self) -> Result<Vec<NodeReport>, EngineError> {
        self.inner.nodes().await
    }
    async fn admit(&self, rate: u32) -> Result<Option<bool>, EngineError> {
        self.inner.admit(rate).await
    }
    async fn start_room(
        &self,
        user: &str,
        rate: f64,
        burst: u32,
    ) -> Result<Option<f64>, EngineError> {
        self.inner.start_room(user, rate, burst).await
    }
}

#[async_trait]
impl Engine for Faulty {
    fn healthy(&self) -> bool {
        true
    }
    async fn rewind_for_test(&self, room: &str, keep: Option<u64>) {
        self.inner.rewind_for_test(room, keep).await
    }
}
