//! The in-memory engine: one node, no dependencies; the embedded default.

mod budget;
mod cursors;
mod stream;

use self::budget::Budget;
pub use self::budget::BudgetCounters;
use self::cursors::InboxCursors;
use self::stream::Stream;
use super::seen::SeenTops;
use super::{
    now_ms, Broker, Engine, EngineError, Envelope, History, HistoryPage, HistoryQuery, NodeReport,
    Nodes, PresenceManager, Present, Publish, Published, SaveOutcome, SessionRecord, Sessions,
    TakenSession,
};
use crate::config::{Config, Namespaces, RetentionConfig};
use crate::hub::Hub;
use crate::protocol::push::msg_frame;
use crate::protocol::StreamPosition;
use async_trait::async_trait;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often idle streams are swept (trimmed by age; dropped when nothing is left).
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Streams swept per hold of the streams map's lock.
const PRUNE_CHUNK: usize = 256;

/// Stored sessions by resume token, with their expiry; `None` marks a token a resume took
/// (until the session would have expired: [`Sessions::take_session`]).
#[derive(Default)]
struct SessionStore {
    map: HashMap<String, (Option<SessionRecord>, Instant)>,
    swept: Option<Instant>,
}

/// Single-node engine keeping everything in process memory.
pub struct MemoryEngine {
    hub: Arc<Hub>,
    history: RetentionConfig,
    inbox: RetentionConfig,
    namespaces: Namespaces,
    dedup_window: Duration,
    streams: Mutex<HashMap<Arc<str>, Arc<Mutex<Stream>>>>,
    /// room -> user -> connections.
    presence: Mutex<HashMap<String, BTreeMap<String, BTreeSet<String>>>>,
    sessions: Mutex<SessionStore>,
    session_ttl: Duration,
    inbox_cursors: Mutex<InboxCursors>,
    nodes: Mutex<BTreeMap<String, NodeReport>>,
    /// What this engine handed out (the epoch rule's witness, see [`SeenTops`]).
    seen: SeenTops,
    /// When idle streams were last swept.
    pruned: Mutex<Instant>,
    /// The epoch and top of rooms whose streams were swept (every message aged out): the
    /// store's record of them, as Redis keeps a room's meta past its messages, bounded the
    /// same way as `seen`.
    idle_heads: SeenTops,
    /// The bytes of messages held against `memory.maxBytes` (every stream's too).
    budget: Arc<Budget>,
}

/// Locks a mutex, tolerating poison: the maps stay usable after a panic elsewhere.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryEngine {
    /// Creates an engine delivering into `hub`.
    pub fn new(hub: Arc<Hub>, config: &Config) -> Self {
        Self::counting(hub, config, BudgetCounters::unregistered())
    }

    /// Creates an engine delivering into `hub` that counts in `counters` the bytes of
    /// messages it holds and those it evicts (`memory.maxBytes`).
    pub fn counting(hub: Arc<Hub>, config: &Config, counters: BudgetCounters) -> Self {
        let (max_bytes, source) = budget::resolve(&config.memory);
        tracing::info!(
            max_bytes,
            source,
            "memory engine: most bytes of messages kept"
        );
        MemoryEngine {
            hub,
            history: config.history.clone(),
            inbox: config.inbox.clone(),
            namespaces: Namespaces::new(&config.namespaces),
            dedup_window: config.sessions.dedup_window,
            streams: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            sessions: Mutex::new(SessionStore::default()),
            session_ttl: config.sessions.resume_ttl,
            inbox_cursors: Mutex::new(InboxCursors::default()),
            nodes: Mutex::new(BTreeMap::new()),
            seen: SeenTops::default(),
            pruned: Mutex::new(Instant::now()),
            idle_heads: SeenTops::default(),
            budget: Arc::new(Budget::new(max_bytes, counters)),
        }
    }

    /// The room's stream, created for a write: in its epoch and after its top if its
    /// stream was pruned.
    fn stream(&self, room: &str) -> Arc<Mutex<Stream>> {
        let mut streams = lock(&self.streams);
        if let Some(s) = streams.get(room) {
            return s.clone();
        }
        let known = self.idle_heads.get(room);
        let s = Arc::new(Mutex::new(Stream::new(self.budget.clone(), known)));
        streams.insert(room.into(), s.clone());
        s
    }

    /// The room's stream if it has one: reads create nothing.
    fn existing(&self, room: &str) -> Option<Arc<Mutex<Stream>>> {
        lock(&self.streams).get(room).cloned()
    }

    /// Drops streams with nothing left (every message aged out, no msg id remembered), at
    /// most every [`PRUNE_EVERY`]. A stream someone holds right now is kept: only the map
    /// holds an idle one (publishers clone it under the same map lock).
    ///
    /// The map's lock is taken for [`PRUNE_CHUNK`] streams at a time, not for the whole
    /// walk: every publish and history read of the pod takes it, and a sweep of 100,000
    /// rooms under it held them all for tens of milliseconds.
    fn prune_idle(&self) {
        let now = Instant::now();
        {
            let mut last = lock(&self.pruned);
            if now.duration_since(*last) < PRUNE_EVERY {
                return;
            }
            *last = now;
        }
        let now_ms = now_ms();
        let rooms: Vec<Arc<str>> = lock(&self.streams).keys().cloned().collect();
        for chunk in rooms.chunks(PRUNE_CHUNK) {
            let mut streams = lock(&self.streams);
            for room in chunk {
                let Entry::Occupied(entry) = streams.entry(room.clone()) else {
                    continue;
                };
                if Arc::strong_count(entry.get()) > 1 {
                    continue;
                }
                let idle = {
                    let mut s = lock(entry.get());
                    s.trim(self.retention(room), now_ms);
                    s.forget_expired_ids(now);
                    let idle = s.is_empty() && !s.remembers_ids();
                    if idle {
                        self.idle_heads.observe(room, &s.epoch, s.top);
                    }
                    idle
                };
                if idle {
                    entry.remove();
                }
            }
        }
    }

    fn retention(&self, room: &str) -> &RetentionConfig {
        super::retention(&self.namespaces, room, &self.history, &self.inbox)
    }
}

#[async_trait]
impl Broker for MemoryEngine {
    async fn publish(&self, msg: Publish) -> Result<Published, EngineError> {
        self.prune_idle();
        let ns = self.namespaces.of(&msg.room);
        if !ns.keep_history || crate::protocol::is_internal(&msg.room) {
            let env = Arc::new(Envelope::ephemeral(&msg, now_ms()));
            self.hub.deliver(&env);
            return Ok(Published::ephemeral());
        }
        let stream = self.stream(&msg.room);
        let mut s = lock(&stream);
        if self.seen.behind(&msg.room, &s.epoch, s.top) {
            s.restart_epoch();
        }
        let now = Instant::now();
        s.forget_expired_ids(now);
        let key = format!("{}\0{}", msg.from, msg.msg_id);
        // An id is a duplicate within its epoch; one stored in an epoch since replaced is
        // stored again (its old copy went with that epoch).
        if let Some((seq, _)) = s.stored_id(&key).filter(|(_, e)| **e == s.epoch) {
            return Ok(Published {
                at: StreamPosition::new(s.epoch.clone(), seq),
                duplicate: true,
                ephemeral: false,
                ts: 0,
            });
        }
        let quota = if crate::protocol::is_inbox(&msg.room) {
            ns.dm_quota
        } else {
            0
        };
        // Expired messages go first: a sender whose messages all expired is under its
        // quota again, without waiting for the next publish's trim or the idle prune.
        let ts = now_ms();
        let retention = self.retention(&msg.room);
        s.trim(retention, ts);
        if !s.under_quota(&msg.from, quota) {
            return Err(EngineError::Quota(format!(
                "you have {quota} messages in this inbox already; wait until some expire"
            )));
        }
        s.top += 1;
        let seq = s.top;
        let frame = msg_frame(msg.content(), seq, &s.epoch, ts);
        let trace = msg.trace().map(Arc::from);
        let env = Arc::new(Envelope::new(
            msg.room.clone(),
            seq,
            s.epoch.clone(),
            ts,
            trace,
            &frame,
        ));
        s.push(ts, env.clone());
        s.trim(retention, ts);
        s.remember_id(&key, seq, now + self.dedup_window);
        if quota > 0 {
            s.by_sender
                .entry(msg.from.clone())
                .or_default()
                .push_back(seq);
        }
        self.seen.observe(&msg.room, &s.epoch, seq);
        // Delivered under the stream lock so hub order equals seq order.
        self.hub.deliver(&env);
        let at = StreamPosition::new(s.epoch.clone(), seq);
        drop(s);
        if self.budget.over() {
            self.evict();
        }
        Ok(Published {
            at,
            duplicate: false,
            ephemeral: false,
            ts,
        })
    }
    async fn subscribe(&self, _room: &str) -> Result<Option<HistoryPage>, EngineError> {
        Ok(None) // publish delivers to this node's hub directly
    }
    async fn unsubscribe(&self, _room: &str) -> Result<(), EngineError> {
        Ok(())
    }
}

#[async_trait]
impl History for MemoryEngine {
    async fn history(&self, room: &str, q: HistoryQuery) -> Result<HistoryPage, EngineError> {
        self.prune_idle();
        let Some(stream) = self.existing(room) else {
            // Pruned once its messages aged out: it keeps its epoch and top.
            return Ok(self
                .idle_heads
                .get(room)
                .map_or_else(HistoryPage::empty, |at| HistoryPage::idle(&at)));
        };
        let mut s = lock(&stream);
        if self.seen.behind(room, &s.epoch, s.top) {
            s.restart_epoch();
        }
        s.trim(self.retention(room), now_ms());
        Ok(s.page(q))
    }
}

#[async_trait]
impl PresenceManager for MemoryEngine {
    async fn presence_join(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        let ns = self.namespaces.of(room);
        if !ns.presence {
            return Ok(());
        }
        let mut p = lock(&self.presence);
        let conns = p
            .entry(room.to_string())
            .or_default()
            .entry(user.to_string())
            .or_default();
        let first = conns.is_empty();
        conns.insert(conn.to_string());
        // Told under the lock: a user's last leave and next first join (another thread)
        // must reach the hub in the order they changed the map, or members would see
        // `left` for a user who is present.
        if first && ns.join_leave_events {
            self.hub.presence(room, user, true);
        }
        Ok(())
    }
    async fn presence_leave(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        let mut p = lock(&self.presence);
        let Some(users) = p.get_mut(room) else {
            return Ok(());
        };
        let Some(conns) = users.get_mut(user) else {
            return Ok(());
        };
        let last = conns.remove(conn) && conns.is_empty();
        if conns.is_empty() {
            users.remove(user);
        }
        if users.is_empty() {
            p.remove(room);
        }
        // Under the lock, as in presence_join.
        if last && self.namespaces.of(room).join_leave_events {
            self.hub.presence(room, user, false);
        }
        Ok(())
    }
    async fn active_rooms(&self, limit: usize) -> Result<Vec<(String, usize)>, EngineError> {
        let mut rooms: Vec<(String, usize)> = lock(&self.presence)
            .iter()
            .filter(|(room, _)| !crate::protocol::is_internal(room))
            .map(|(room, users)| (room.clone(), users.len()))
            .collect();
        rooms.sort();
        rooms.truncate(limit);
        Ok(rooms)
    }
    async fn is_present(&self, room: &str, user: &str) -> Result<bool, EngineError> {
        Ok(lock(&self.presence)
            .get(room)
            .is_some_and(|users| users.contains_key(user)))
    }
    async fn presence_upto(&self, room: &str, limit: usize) -> Result<Present, EngineError> {
        Ok(lock(&self.presence)
            .get(room)
            .map(|users| Present {
                users: users.keys().take(limit).cloned().collect(),
                count: users.len(),
            })
            .unwrap_or_default())
    }
}

#[async_trait]
impl Sessions for MemoryEngine {
    async fn save_session(
        &self,
        token: &str,
        session: &SessionRecord,
    ) -> Result<SaveOutcome, EngineError> {
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        // Expired sessions are swept at most once a second, not on every save: a sweep
        // walks every stored session, and saves happen on every join, leave and close.
        if sessions
            .swept
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(1))
        {
            sessions.map.retain(|_, (_, until)| *until > now);
            sessions.swept = Some(now);
        }
        let until = now + self.session_ttl;
        if let Some((None, mark)) = sessions.map.get_mut(token) {
            if *mark > now {
                // The mark lives `resumeTtl` from this save, as on Redis: it must outlive
                // whatever this token's connection could still save.
                *mark = until;
                return Ok(SaveOutcome::Taken);
            }
        }
        let record = (Some(session.clone()), until);
        sessions.map.insert(token.to_string(), record);
        Ok(SaveOutcome::Stored)
    }
    async fn take_session(&self, token: &str, user: &str) -> Result<TakenSession, EngineError> {
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        let Entry::Occupied(mut stored) = sessions.map.entry(token.to_string()) else {
            return Ok(TakenSession::Missing);
        };
        if stored.get().1 <= now {
            stored.remove();
            return Ok(TakenSession::Missing);
        }
        // The user's record is taken out; the entry stays as the mark, its expiry kept.
        let record = &mut stored.get_mut().0;
        Ok(match record.take_if(|r| r.user == user) {
            Some(taken) => TakenSession::Taken(taken),
            None if record.is_some() => TakenSession::OtherUsers,
            None => TakenSession::Missing,
        })
    }
    async fn drop_session(&self, token: &str, user: &str) -> Result<(), EngineError> {
        let mut sessions = lock(&self.sessions);
        if matches!(sessions.map.get(token), Some((Some(record), _)) if record.user == user) {
            sessions.map.remove(token);
        }
        Ok(())
    }
    #[cfg(any(test, feature = "testing"))]
    async fn peek_session_for_test(&self, token: &str) -> Option<SessionRecord> {
        let sessions = lock(&self.sessions);
        let (record, until) = sessions.map.get(token)?;
        record.clone().filter(|_| *until > Instant::now())
    }
    async fn inbox_cursor(&self, user: &str) -> Result<Option<StreamPosition>, EngineError> {
        Ok(lock(&self.inbox_cursors).get(user, Instant::now()))
    }
    async fn ack_inbox(&self, user: &str, at: &StreamPosition) -> Result<(), EngineError> {
        // 2 × the inbox's maxAge (as in Redis): every message the cursor could skip has
        // aged out by then, so forgetting it replays nothing that was acknowledged.
        let inbox = crate::protocol::inbox_of(user);
        let ttl = self.retention(&inbox).max_age.saturating_mul(2);
        lock(&self.inbox_cursors).ack(user, at, ttl, Instant::now());
        Ok(())
    }
}

#[async_trait]
impl Nodes for MemoryEngine {
    async fn report_node(&self, report: &NodeReport) -> Result<(), EngineError> {
        lock(&self.nodes).insert(report.id.clone(), report.clone());
        Ok(())
    }
    async fn nodes(&self) -> Result<Vec<NodeReport>, EngineError> {
        Ok(lock(&self.nodes).values().cloned().collect())
    }
    async fn admit(&self, _rate: u32) -> Result<Option<bool>, EngineError> {
        Ok(None) // one node: the node's own window is the whole cluster
    }
    async fn start_room(&self, _: &str, _: f64, _: u32) -> Result<Option<f64>, EngineError> {
        Ok(None) // one node: the node's own bucket is the whole cluster's
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn healthy(&self) -> bool {
        true
    }

    #[cfg(any(test, feature = "testing"))]
    async fn rewind_for_test(&self, room: &str, keep: Option<u64>) {
        match keep {
            None => {
                lock(&self.streams).remove(room);
                self.idle_heads.forget(room);
            }
            Some(keep) => {
                if let Some(stream) = self.existing(room) {
                    lock(&stream).rewind(keep);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_budget;
