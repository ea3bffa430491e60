//! Sessions, inbox cursors, the node registry and the users' room starts on Redis: each is
//! one key per call (single-slot in a cluster), except the registry read, an MGET the
//! cluster client splits by slot.

use super::RedisEngine;
use super::{scripts, NODE_TTL};
use crate::engine::{
    now_ms, EngineError, NodeReport, Nodes, SaveOutcome, SessionRecord, Sessions, TakenSession,
};
use crate::protocol::StreamPosition;
use async_trait::async_trait;
use redis::AsyncCommands;

#[async_trait]
impl Sessions for RedisEngine {
    async fn save_session(
        &self,
        token: &str,
        session: &SessionRecord,
    ) -> Result<SaveOutcome, EngineError> {
        let s = &self.shared;
        let json =
            serde_json::to_string(session).map_err(|e| EngineError::Internal(e.to_string()))?;
        let key = s.keys.session(token);
        let ttl = s.session_ttl.as_millis() as u64;
        let mut c = s.conn();
        // One SET that hands back what it replaced, rather than a script that looks first:
        // a script costs Redis about five times a SET, and saves come three per connection
        // (join, leave, close). The rare save that replaced a taken mark puts it back; the
        // record is there for that one round trip.
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(json).arg("PX").arg(ttl).arg("GET");
        let replaced: Option<Vec<u8>> = s.run(set.query_async(&mut c)).await?;
        if replaced.as_deref() != Some(scripts::SESSION_TAKEN.as_bytes()) {
            return Ok(SaveOutcome::Stored);
        }
        let mut mark = redis::cmd("SET");
        mark.arg(&key).arg(scripts::SESSION_TAKEN).arg("KEEPTTL");
        let _: () = s.run(mark.query_async(&mut c)).await?;
        Ok(SaveOutcome::Taken)
    }
    async fn take_session(&self, token: &str, user: &str) -> Result<TakenSession, EngineError> {
        self.take_or_drop(token, user, true).await
    }
    async fn drop_session(&self, token: &str, user: &str) -> Result<(), EngineError> {
        self.take_or_drop(token, user, false).await.map(|_| ())
    }
    #[cfg(any(test, feature = "testing"))]
    async fn peek_session_for_test(&self, token: &str) -> Option<SessionRecord> {
        let s = &self.shared;
        let mut c = s.conn();
        let json: Option<String> = s.run(c.get(s.keys.session(token))).await.ok()?;
        serde_json::from_str(&json?).ok()
    }
    async fn inbox_cursor(&self, user: &str) -> Result<Option<StreamPosition>, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        let v: Option<String> = s.run(c.get(s.keys.inbox_cursor(user))).await?;
        // "<seq> <epoch>"; anything else (a cursor of an older version) counts as none.
        Ok(v.and_then(|v| {
            let (seq, epoch) = v.split_once(' ')?;
            Some(StreamPosition::new(epoch, seq.parse().ok()?))
        }))
    }
    async fn ack_inbox(&self, user: &str, at: &StreamPosition) -> Result<(), EngineError> {
        let s = &self.shared;
        // The inbox's retention: the `user:` namespace's when it sets one.
        let max_age = s.retention(&crate::protocol::inbox_of(user)).max_age;
        let mut c = s.conn();
        let _: i64 = s
            .run(
                scripts::INBOX_ACK
                    .key(s.keys.inbox_cursor(user))
                    .arg(at.seq)
                    .arg(&*at.epoch)
                    .arg(max_age.as_millis() as u64 * 2)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(())
    }
}

impl RedisEngine {
    /// The user's session under `token`, taken out of the store; `mark`: a mark is left in
    /// its place ([`Sessions::take_session`]), otherwise the key is deleted.
    async fn take_or_drop(
        &self,
        token: &str,
        user: &str,
        mark: bool,
    ) -> Result<TakenSession, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        let taken: redis::Value = s
            .run(
                scripts::SESSION_TAKE
                    .key(s.keys.session(token))
                    .arg(user)
                    .arg(scripts::SESSION_TAKEN)
                    .arg(if mark { "1" } else { "0" })
                    .invoke_async(&mut c),
            )
            .await?;
        let json = match taken {
            redis::Value::Nil => return Ok(TakenSession::Missing),
            redis::Value::Int(_) => return Ok(TakenSession::OtherUsers),
            redis::Value::BulkString(json) => json,
            other => {
                let e = format!("stored session: unexpected reply {other:?}");
                return Err(EngineError::Internal(e));
            }
        };
        serde_json::from_slice(&json)
            .map(TakenSession::Taken)
            .map_err(|e| EngineError::Internal(format!("stored session: {e}")))
    }
}

#[async_trait]
impl Nodes for RedisEngine {
    async fn report_node(&self, r: &NodeReport) -> Result<(), EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        let key = s.keys.node(&r.id);
        let json = serde_json::to_string(r).map_err(|e| EngineError::Internal(e.to_string()))?;
        // The entry and the registry are two keys (two slots in a cluster): two calls. The
        // registry expires with the last node's entry: without one it outlived every
        // gateway of its prefix (the only key without an expiry).
        let mut c2 = c.clone();
        let entry = s.run(c.pset_ex::<_, _, ()>(&key, json, NODE_TTL.as_millis() as u64));
        let mut pipe = redis::pipe();
        pipe.zadd(s.keys.nodes(), &r.id, r.heartbeat)
            .ignore()
            .zrembyscore(
                s.keys.nodes(),
                "-inf",
                r.heartbeat.saturating_sub(NODE_TTL.as_millis() as u64),
            )
            .ignore()
            .pexpire(s.keys.nodes(), NODE_TTL.as_millis() as i64)
            .ignore();
        let registry = s.run(pipe.query_async::<()>(&mut c2));
        let (a, b) = futures_util::future::join(entry, registry).await;
        a?;
        b?;
        Ok(())
    }
    async fn nodes(&self) -> Result<Vec<NodeReport>, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        let ids: Vec<String> = s.run(c.zrange(s.keys.nodes(), 0, -1)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| s.keys.node(id)).collect();
        let values: Vec<Option<String>> = s.run(c.mget(keys)).await?;
        let mut out: Vec<NodeReport> = values
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
    async fn admit(&self, rate: u32) -> Result<Option<bool>, EngineError> {
        let s = &self.shared;
        let key = s.keys.admission(now_ms() / 1000);
        let mut c = s.conn();
        let (count,): (u64,) = s
            .run(
                redis::pipe()
                    .incr(&key, 1)
                    .pexpire(&key, 5000)
                    .ignore()
                    .query_async(&mut c),
            )
            .await?;
        Ok(Some(count <= u64::from(rate)))
    }
    async fn start_room(
        &self,
        user: &str,
        rate: f64,
        burst: u32,
    ) -> Result<Option<f64>, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        // A string: a Lua number comes back cut to an integer.
        let left: String = s
            .run(
                scripts::ROOM_STARTS
                    .key(s.keys.room_starts(user))
                    .arg(now_ms())
                    .arg(rate)
                    .arg(burst)
                    .invoke_async(&mut c),
            )
            .await?;
        left.parse()
            .map(Some)
            .map_err(|_| EngineError::Internal(format!("room starts left: {left:?}")))
    }
}
