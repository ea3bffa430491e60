//! History: what a read asks for ([`HistoryQuery`]), what it gets ([`HistoryPage`]), the
//! engines' side of it ([`History`]) and the one way callers read it ([`page`]).

use super::{EngineError, Envelope};
use async_trait::async_trait;
use std::sync::Arc;

/// Which part of a room's history to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only seq > since, oldest first.
    pub since: Option<u64>,
    /// Only seq < before; without `since`, the newest `limit` of those.
    pub before: Option<u64>,
    /// At most this many messages.
    pub limit: usize,
    /// At most this many bytes of frames (0: no cap). The first message of the page is
    /// always included, so a page makes progress whatever the cap.
    pub max_bytes: usize,
}

/// The epoch a room without any stored message reports. Reading a room creates nothing,
/// so a room nobody wrote to has no epoch of its own yet; its first message starts a
/// random one. A client position at seq 0 is covered in any epoch (it has seen nothing).
pub const EMPTY_EPOCH: &str = "0000000000000000";

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
    /// Messages of the asked range were left out by `limit` or `max_bytes`.
    pub more: bool,
}

impl HistoryPage {
    /// Whether everything after `seq` (in `epoch`) is still retained. Seq 0 means "nothing
    /// seen yet": any epoch covers it while nothing was trimmed. [`EMPTY_EPOCH`] says no
    /// more than a missing epoch (a position taken before the room's first message).
    pub fn covers(&self, seq: u64, epoch: Option<&str>) -> bool {
        let same_epoch = seq == 0 || epoch.is_none_or(|e| e == &*self.epoch || e == EMPTY_EPOCH);
        same_epoch && seq <= self.top && self.first <= seq + 1
    }

    /// A page of a room that holds no message now, up to `at`: its epoch and top stay
    /// (its messages aged out), the next seq follows.
    pub fn idle(at: &crate::protocol::StreamPosition) -> HistoryPage {
        HistoryPage {
            epoch: at.epoch.clone(),
            top: at.seq,
            first: at.seq + 1,
            messages: Vec::new(),
            more: false,
        }
    }

    /// An empty page of a room with no stored message.
    pub fn empty() -> HistoryPage {
        HistoryPage {
            epoch: EMPTY_EPOCH.into(),
            top: 0,
            first: 1,
            messages: Vec::new(),
            more: false,
        }
    }
}

/// Cuts a run of messages (in the order a page is filled: oldest first for `since`,
/// newest first otherwise) to `limit` messages and `max_bytes` bytes (0: no byte cap),
/// always keeping the first one. Returns the kept ones and whether any were left out.
pub fn cut_page<'a>(
    run: impl Iterator<Item = &'a Arc<Envelope>>,
    limit: usize,
    max_bytes: usize,
) -> (Vec<Arc<Envelope>>, bool) {
    let mut out: Vec<Arc<Envelope>> = Vec::new();
    let mut bytes = 0usize;
    for env in run {
        let full = out.len() >= limit
            || (max_bytes > 0 && !out.is_empty() && bytes + env.frame.len() > max_bytes);
        if full {
            return (out, true);
        }
        bytes += env.frame.len();
        out.push(env.clone());
    }
    (out, false)
}

/// Stored messages of rooms and inboxes.
#[async_trait]
pub trait History: Send + Sync {
    /// Reads history.
    async fn history(&self, room: &str, query: HistoryQuery) -> Result<HistoryPage, EngineError>;
}

/// Reads a page as a client's `history` or the server API asks for it. `limit: 0` asks
/// for the room's head (top, first) and whether the range holds any message (`more`),
/// with no message: the engines are asked for one, which is left out (read with a limit of
/// 0 they answered `more` differently).
pub async fn page<H: History + ?Sized>(
    history: &H,
    room: &str,
    query: HistoryQuery,
) -> Result<HistoryPage, EngineError> {
    if query.limit > 0 {
        return history.history(room, query).await;
    }
    let mut page = history
        .history(room, HistoryQuery { limit: 1, ..query })
        .await?;
    page.more |= !page.messages.is_empty();
    page.messages.clear();
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::memory::MemoryEngine;
    use crate::engine::{Broker, Publish};
    use serde_json::value::RawValue;

    /// `limit: 0` reads the head and whether the range holds any message, on every caller
    /// (the server API passed the 0 to the engines, which answered `more` differently).
    #[tokio::test]
    async fn a_page_of_limit_zero_has_no_message_and_says_whether_there_are_any() {
        let engine = MemoryEngine::new(Default::default(), &crate::config::Config::default());
        for i in 0..3 {
            engine
                .publish(Publish {
                    room: "r".into(),
                    from: "a".into(),
                    msg_id: format!("m{i}"),
                    body: RawValue::from_string("1".into()).expect("raw"),
                    traceparent: None,
                })
                .await
                .expect("publish");
        }
        for (since, more) in [(0, true), (2, true), (3, false)] {
            let asked = HistoryQuery {
                since: Some(since),
                ..Default::default()
            };
            let p = page(&engine, "r", asked).await.expect("page");
            assert!(p.messages.is_empty(), "since {since}");
            assert_eq!((p.more, p.top), (more, 3), "since {since}");
        }
    }
}
