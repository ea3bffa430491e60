//! The in-memory engine: one node, no dependencies; the embedded default.

use super::{
    new_epoch, now_ms, Broker, Engine, EngineError, Envelope, History, HistoryPage, HistoryQuery,
    NodeReport, Nodes, PresenceManager, Publish, Published, SessionRecord, Sessions,
};
use crate::config::{Config, RetentionConfig};
use crate::hub::Hub;
use crate::protocol::push::{msg_frame, presence_frame};
use crate::protocol::StreamPosition;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One room's (or inbox's) stream of messages.
struct Stream {
    epoch: Arc<str>,
    top: u64,
    /// (append time in Unix ms, message), oldest first.
    msgs: VecDeque<(u64, Arc<Envelope>)>,
    /// "from\0msg_id" -> (seq, remembered until).
    dedup: HashMap<String, (u64, Instant)>,
    dedup_order: VecDeque<(Instant, String)>,
}

impl Stream {
    fn new() -> Self {
        Stream {
            epoch: new_epoch().into(),
            top: 0,
            msgs: VecDeque::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
        }
    }

    fn trim(&mut self, retention: &RetentionConfig, now: u64) {
        let max_age = retention.max_age.as_millis() as u64;
        while self.msgs.len() > retention.max_messages
            || self
                .msgs
                .front()
                .is_some_and(|(ts, _)| now.saturating_sub(*ts) > max_age)
        {
            self.msgs.pop_front();
        }
    }

    fn forget_expired_ids(&mut self, now: Instant) {
        while let Some((until, _)) = self.dedup_order.front() {
            if *until > now {
                break;
            }
            if let Some((_, key)) = self.dedup_order.pop_front() {
                if self.dedup.get(&key).is_some_and(|(_, u)| *u <= now) {
                    self.dedup.remove(&key);
                }
            }
        }
    }

    fn first(&self) -> u64 {
        self.msgs.front().map_or(self.top + 1, |(_, m)| m.seq)
    }
}

/// Stored sessions by resume token, with their expiry.
#[derive(Default)]
struct SessionStore {
    map: HashMap<String, (SessionRecord, Instant)>,
    swept: Option<Instant>,
}

/// Single-node engine keeping everything in process memory.
pub struct MemoryEngine {
    hub: Arc<Hub>,
    history: RetentionConfig,
    inbox: RetentionConfig,
    dedup_window: Duration,
    streams: Mutex<HashMap<Arc<str>, Arc<Mutex<Stream>>>>,
    /// room -> user -> connections.
    presence: Mutex<HashMap<String, BTreeMap<String, BTreeSet<String>>>>,
    sessions: Mutex<SessionStore>,
    session_ttl: Duration,
    inbox_cursors: Mutex<HashMap<String, u64>>,
    nodes: Mutex<BTreeMap<String, NodeReport>>,
}

/// Locks a mutex, tolerating poison: the maps stay usable after a panic elsewhere.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryEngine {
    /// Creates an engine delivering into `hub`.
    pub fn new(hub: Arc<Hub>, config: &Config) -> Self {
        MemoryEngine {
            hub,
            history: config.history.clone(),
            inbox: config.inbox.clone(),
            dedup_window: config.sessions.dedup_window,
            streams: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            sessions: Mutex::new(SessionStore::default()),
            session_ttl: config.sessions.resume_ttl,
            inbox_cursors: Mutex::new(HashMap::new()),
            nodes: Mutex::new(BTreeMap::new()),
        }
    }

    fn stream(&self, room: &str) -> Arc<Mutex<Stream>> {
        let mut streams = lock(&self.streams);
        if let Some(s) = streams.get(room) {
            return s.clone();
        }
        let s = Arc::new(Mutex::new(Stream::new()));
        streams.insert(room.into(), s.clone());
        s
    }

    fn retention(&self, room: &str) -> &RetentionConfig {
        if crate::protocol::is_inbox(room) {
            &self.inbox
        } else {
            &self.history
        }
    }
}

#[async_trait]
impl Broker for MemoryEngine {
    async fn publish(&self, msg: Publish) -> Result<Published, EngineError> {
        let stream = self.stream(&msg.room);
        let mut s = lock(&stream);
        let now = Instant::now();
        s.forget_expired_ids(now);
        let key = format!("{}\0{}", msg.from, msg.msg_id);
        if let Some((seq, _)) = s.dedup.get(&key) {
            return Ok(Published {
                at: StreamPosition::new(s.epoch.clone(), *seq),
                duplicate: true,
            });
        }
        let ts = now_ms();
        s.top += 1;
        let seq = s.top;
        let env = Arc::new(Envelope {
            room: msg.room.clone(),
            seq,
            epoch: s.epoch.clone(),
            ts,
            traceparent: msg.traceparent.as_deref().map(Arc::from),
            frame: msg_frame(msg.content(), seq, &s.epoch, ts).into(),
        });
        s.msgs.push_back((ts, env.clone()));
        s.trim(self.retention(&msg.room), ts);
        let until = now + self.dedup_window;
        s.dedup.insert(key.clone(), (seq, until));
        s.dedup_order.push_back((until, key));
        // Delivered under the stream lock so hub order equals seq order.
        self.hub.deliver(&env);
        Ok(Published {
            at: StreamPosition::new(s.epoch.clone(), seq),
            duplicate: false,
        })
    }
    async fn subscribe(&self, _room: &str) -> Result<(), EngineError> {
        Ok(()) // publish delivers to this node's hub directly
    }
    async fn unsubscribe(&self, _room: &str) -> Result<(), EngineError> {
        Ok(())
    }
}

#[async_trait]
impl History for MemoryEngine {
    async fn history(&self, room: &str, q: HistoryQuery) -> Result<HistoryPage, EngineError> {
        let stream = self.stream(room);
        let mut s = lock(&stream);
        s.trim(self.retention(room), now_ms());
        let in_range =
            |seq: u64| q.since.is_none_or(|since| seq > since) && q.before.is_none_or(|b| seq < b);
        let messages: Vec<Arc<Envelope>> = if q.since.is_some() {
            s.msgs
                .iter()
                .map(|(_, m)| m)
                .filter(|m| in_range(m.seq))
                .take(q.limit)
                .cloned()
                .collect()
        } else {
            let mut newest: Vec<Arc<Envelope>> = s
                .msgs
                .iter()
                .rev()
                .map(|(_, m)| m)
                .filter(|m| in_range(m.seq))
                .take(q.limit)
                .cloned()
                .collect();
            newest.reverse();
            newest
        };
        Ok(HistoryPage {
            epoch: s.epoch.clone(),
            top: s.top,
            first: s.first(),
            messages,
        })
    }
}

#[async_trait]
impl PresenceManager for MemoryEngine {
    async fn presence_join(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        let first = {
            let mut p = lock(&self.presence);
            let conns = p
                .entry(room.to_string())
                .or_default()
                .entry(user.to_string())
                .or_default();
            let first = conns.is_empty();
            conns.insert(conn.to_string());
            first
        };
        if first {
            self.hub
                .broadcast(room, &presence_frame(room, user, true).into());
        }
        Ok(())
    }
    async fn presence_leave(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        let last = {
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
            last
        };
        if last {
            self.hub
                .broadcast(room, &presence_frame(room, user, false).into());
        }
        Ok(())
    }
    async fn presence(&self, room: &str) -> Result<Vec<String>, EngineError> {
        Ok(lock(&self.presence)
            .get(room)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl Sessions for MemoryEngine {
    async fn save_session(&self, token: &str, session: &SessionRecord) -> Result<(), EngineError> {
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
        sessions
            .map
            .insert(token.to_string(), (session.clone(), now + self.session_ttl));
        Ok(())
    }
    async fn take_session(&self, token: &str) -> Result<Option<SessionRecord>, EngineError> {
        let now = Instant::now();
        Ok(lock(&self.sessions)
            .map
            .remove(token)
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| s))
    }
    async fn inbox_cursor(&self, user: &str) -> Result<u64, EngineError> {
        Ok(lock(&self.inbox_cursors).get(user).copied().unwrap_or(0))
    }
    async fn ack_inbox(&self, user: &str, seq: u64) -> Result<(), EngineError> {
        let mut c = lock(&self.inbox_cursors);
        let cur = c.entry(user.to_string()).or_insert(0);
        *cur = (*cur).max(seq);
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
}

impl Engine for MemoryEngine {
    fn healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(hub: Arc<Hub>, config: &Config) -> Arc<dyn Engine> {
        Arc::new(MemoryEngine::new(hub, config))
    }

    #[tokio::test]
    async fn conformance() {
        crate::engine::conformance::run_all(&engine).await;
    }

    /// Sessions nobody resumes must not pile up: expired ones are swept on a later save
    /// (at most once a second), so memory stays bounded by the sessions of the last TTL.
    #[tokio::test]
    async fn expired_sessions_are_swept() {
        let mut config = Config::default();
        config.sessions.resume_ttl = Duration::from_millis(100);
        let engine = MemoryEngine::new(Arc::new(Hub::default()), &config);
        let record = SessionRecord {
            user: "u".into(),
            node: "n".into(),
            rooms: Default::default(),
            connected_at: 0,
            last_seen: 0,
        };
        for i in 0..10 {
            engine
                .save_session(&format!("t{i}"), &record)
                .await
                .expect("save");
        }
        assert_eq!(lock(&engine.sessions).map.len(), 10);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        engine.save_session("fresh", &record).await.expect("save");
        let left: Vec<String> = lock(&engine.sessions).map.keys().cloned().collect();
        assert_eq!(left, ["fresh"]);
    }
}
