//! The heads of many inboxes read in few script calls. Every connection subscribes its
//! user's inbox, and the subscriber reads the inbox's head (epoch, top, first retained
//! seq) for its catch-up. A connect storm (a rolling update moving every socket) brings
//! them by the hundred, and the subscriber takes them in batches already; read one script
//! call each they cost Redis' one thread 3.5–4.0 µs an inbox, read in one call per batch
//! 2.3–3.1 (`INFO commandstats`, 15,000 connects).

use super::scripts;
use super::shared::{parse_history, Shared};
use crate::engine::{EngineError, HistoryPage, HistoryQuery};

/// Most rooms one script call reads: Redis runs nothing else meanwhile, so a call stays
/// short (a head is a few commands; an inbox past its retention deletes up to 32 entries).
const PER_CALL: usize = 64;

/// The heads of `rooms`, in order, as [`Shared::history`] returns them for
/// `HistoryQuery::default()` (no messages). Outside a cluster, one script call per
/// [`PER_CALL`] rooms; in a cluster the rooms' keys are in different slots, so one call
/// each (all sent at once on the multiplexed connection).
pub(super) async fn heads(
    shared: &Shared,
    rooms: &[&str],
) -> Vec<Result<HistoryPage, EngineError>> {
    if shared.keys.cluster || rooms.len() == 1 {
        let reads = rooms
            .iter()
            .map(|r| shared.history(r, HistoryQuery::default()));
        return futures_util::future::join_all(reads).await;
    }
    let chunks: Vec<&[&str]> = rooms.chunks(PER_CALL).collect();
    let pages = futures_util::future::join_all(chunks.iter().map(|chunk| read(shared, chunk)));
    let mut heads = Vec::with_capacity(rooms.len());
    for (chunk, pages) in chunks.iter().zip(pages.await) {
        for (room, page) in chunk.iter().zip(pages) {
            heads.push(match page.map(|p| shared.unless_behind(room, p)) {
                Ok(Ok(page)) => Ok(page),
                // The store is behind what this node saw: the epoch rule applies, which
                // the single read does (rare: after a restore or a failover).
                Ok(Err(_behind)) => shared.history(room, HistoryQuery::default()).await,
                Err(e) => Err(e),
            });
        }
    }
    heads
}

/// One script call for `rooms`' heads: one page each, or the call's error for every one.
async fn read(shared: &Shared, rooms: &[&str]) -> Vec<Result<HistoryPage, EngineError>> {
    let mut call = scripts::HEADS.prepare_invoke();
    for room in rooms {
        call.key(shared.keys.meta(room))
            .key(shared.keys.stream(room));
    }
    for room in rooms {
        call.arg(shared.retention(room).max_age.as_millis() as u64);
    }
    let mut conn = shared.conn();
    let raw: Result<Vec<Vec<redis::Value>>, EngineError> =
        shared.run(call.invoke_async(&mut conn)).await;
    match raw {
        Ok(pages) if pages.len() == rooms.len() => rooms
            .iter()
            .zip(pages)
            .map(|(room, raw)| parse_history(room, raw))
            .collect(),
        Ok(_) => {
            let bad = EngineError::Internal("unexpected heads reply from redis".into());
            rooms.iter().map(|_| Err(bad.clone())).collect()
        }
        Err(e) => rooms.iter().map(|_| Err(e.clone())).collect(),
    }
}
