//! Catch-up: replaying what a client missed in a room before its live messages.
//!
//! The order that makes this gap-free: the writer starts holding the room's live messages
//! (`BeginCatchup`), the node subscribes, the room's top is read, the reply goes out, then
//! the replay streams history up to that top in chunks, each queued only when the queue has
//! room for it (the client's pace, never a slow-consumer close; a chunk, at most half the
//! queue, is let in only while the queue stays within half its bytes, so live traffic
//! meanwhile keeps the other half: `push_paced`); then `Release` hands the
//! held live messages over, and the writer drops any seq it already wrote. Joins, resumes
//! and the inbox enter rooms through the one path here.
//!
//! A replay that cannot be finished (the engine fails, or history moved under it: a new
//! epoch, messages trimmed) closes the connection with 1013 `replay interrupted`: the
//! client resumes from what was written, which is exact, instead of seeing a silent gap.

use super::cmd::Refusal;
use super::session::{Joined, Session};
use crate::disconnect;
use crate::engine::{EngineError, HistoryPage, HistoryQuery, SessionRecord};
use crate::log_gate::warn_gated;
use crate::outbound::Outbound;
use crate::permissions::Membership;
use crate::protocol::{ErrorCode, Since, StreamPosition, MAX_HISTORY_LIMIT};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A room's replay still to stream after the reply: history after `from` up to `until`.
#[derive(Debug)]
pub struct Replay {
    /// Room being caught up.
    pub room: Arc<str>,
    /// Where the client stands (nothing at or below it is written).
    pub from: StreamPosition,
    /// The room's top when the catch-up began; later messages are live (held).
    pub until: u64,
}

/// Where a room stands after a catch-up, and the replay that brings the client there.
pub(super) struct CaughtUp {
    /// Everything after the client's position is in the replay.
    pub recovered: bool,
    /// The room's epoch and top seq.
    pub at: StreamPosition,
    /// To stream after the reply.
    pub replay: Replay,
}

impl Session {
    /// Where a client at `since` stands (without `since`: at the top, nothing to replay).
    /// Reads only the room's position (unless the engine read it while subscribing:
    /// `head`); the messages are read while streaming.
    pub(super) async fn catch_up(
        &self,
        room: &Arc<str>,
        since: Option<&Since>,
        head: Option<HistoryPage>,
    ) -> Result<CaughtUp, EngineError> {
        let page = match head {
            Some(page) => page,
            None => self.head_of(room).await?,
        };
        let recovered = since.is_some_and(|s| page.covers(s.seq, s.epoch.as_deref()));
        let from = match since {
            Some(s) if recovered => s.seq,
            _ => page.top,
        };
        Ok(CaughtUp {
            recovered,
            at: StreamPosition::new(page.epoch.clone(), page.top),
            replay: Replay {
                room: room.clone(),
                from: StreamPosition::new(page.epoch, from),
                until: page.top,
            },
        })
    }

    /// The room's head: its epoch, top and first retained seq, no messages.
    async fn head_of(&self, room: &str) -> Result<HistoryPage, EngineError> {
        self.node
            .engine
            .history(room, HistoryQuery::default())
            .await
    }

    /// Streams a replay into the queue chunk by chunk at the client's pace, then releases
    /// the room's held live messages. Returns false when the connection is closing.
    pub(super) async fn stream(&self, r: Replay) -> bool {
        let chunk = self.node.config.limits.replay_chunk_cap();
        let mut next = r.from.seq;
        let mut sent = false;
        while next < r.until {
            let q = HistoryQuery {
                since: Some(next),
                before: Some(r.until + 1),
                limit: MAX_HISTORY_LIMIT,
                max_bytes: chunk,
            };
            let page = match self.node.engine.history(&r.room, q).await {
                Ok(page) => page,
                Err(e) => {
                    let gate = &self.node.connection_failure_log;
                    warn_gated!(gate, room = %r.room, error = %e, "replay failed");
                    self.queue.close(disconnect::REPLAY_INTERRUPTED);
                    return false;
                }
            };
            let contiguous = page.messages.first().is_some_and(|m| m.seq == next + 1);
            if page.epoch != r.from.epoch || !contiguous {
                tracing::info!(room = %r.room, "history changed during a replay");
                self.queue.close(disconnect::REPLAY_INTERRUPTED);
                return false;
            }
            next = page.messages.last().map_or(r.until, |m| m.seq);
            let item = Outbound::Replay {
                room: r.room.clone(),
                from: r.from.clone(),
                msgs: page.messages,
            };
            if !self.queue.push_paced(item).await {
                return false;
            }
            sent = true;
        }
        if !sent {
            // The writer learns the room's position (and epoch) from a replay.
            let item = Outbound::Replay {
                room: r.room.clone(),
                from: r.from,
                msgs: Vec::new(),
            };
            if !self.queue.push_paced(item).await {
                return false;
            }
        }
        self.queue.push(Outbound::Release(r.room))
    }

    /// Refuses a room more once the connection holds `limits.roomsPerConnection`: checked
    /// again before a join is decided, so a full connection asks nobody (the backend's
    /// join hook) about a room it cannot take.
    pub(super) fn room_to_spare(&self) -> Result<(), Refusal> {
        let max = self.node.config.limits.rooms_per_connection;
        if self.rooms.len() >= max {
            return Err(Refusal::new(
                ErrorCode::TooManyRooms,
                format!("at most {max} rooms per connection"),
            ));
        }
        Ok(())
    }

    /// Joins a room as `member` (or catches up a room already joined) from `since`: the
    /// one path of `join` and `resume`. On failure the connection is out of the room.
    pub(super) async fn enter_room(
        &mut self,
        room: &Arc<str>,
        since: Option<&Since>,
        member: Membership,
    ) -> Result<CaughtUp, Refusal> {
        let room = &self.node.hub.shared_name(room);
        let mut head = None;
        if self.rooms.contains_key(room) {
            self.queue.push(Outbound::BeginCatchup(room.clone()));
        } else {
            self.room_to_spare()?;
            head = self.attach(room).await?;
        }
        match self.catch_up(room, since, head).await {
            Ok(caught) => {
                let joined = Joined {
                    at: self.standing(room, &caught.replay.from),
                    member,
                    warned: false,
                };
                self.rooms.insert(room.clone(), joined);
                Ok(caught)
            }
            Err(e) => {
                self.detach(room).await;
                Err(e.into())
            }
        }
    }

    /// Where the client stands in `room` as a replay from `from` begins: what a session
    /// save names until the writer reports what it delivered. Not the room's top: the
    /// replay is streamed after the reply (a resume's rooms one after another), and a
    /// connection that ends before it reached the writer must resume from here, not past
    /// messages it never got. `from` is in the room's current epoch (a position of an
    /// older one starts at the top: nothing is replayed). A room already joined keeps a
    /// later position of that epoch it had: the client has that too.
    fn standing(&self, room: &str, from: &StreamPosition) -> StreamPosition {
        match self.rooms.get(room) {
            Some(j) if j.at.epoch == from.epoch && j.at.seq > from.seq => j.at.clone(),
            _ => from.clone(),
        }
    }

    /// The inbox replay of a connection that did not resume it: from the user's inbox
    /// cursor (what any of the user's devices acknowledged), or everything retained when
    /// the cursor is of another epoch (the inbox started a new one: none of it was
    /// acknowledged). This device's acknowledged position starts there. On an engine error
    /// the held-back inbox messages are released without a replay (nothing is acknowledged,
    /// so a later connection replays them).
    pub(super) async fn replay_inbox_from_cursor(&mut self) -> Option<Replay> {
        self.inbox_pending = false;
        let inbox = self.inbox.clone();
        let head = self.inbox_head.take();
        let start = async {
            let page = match head {
                Some(page) => *page,
                None => self.head_of(&inbox).await?,
            };
            // An inbox with nothing in it has nothing to replay: the cursor would change
            // nothing (a round trip per connection of every user without direct messages).
            let cursor = if page.top == 0 {
                None
            } else {
                self.node.engine.inbox_cursor(self.user()).await?
            };
            let acked = cursor
                .filter(|c| c.epoch == page.epoch)
                .map_or(0, |c| c.seq.min(page.top));
            // Retention may have dropped some of what was never acknowledged.
            let since = acked.max(page.first.saturating_sub(1));
            let from = StreamPosition::new(page.epoch, since);
            Ok::<_, EngineError>(Replay {
                room: inbox.clone(),
                from,
                until: page.top,
            })
        }
        .await;
        match start {
            Ok(replay) => {
                self.inbox_acked = Some(replay.from.clone());
                Some(replay)
            }
            Err(e) => {
                let (gate, user) = (&self.node.connection_failure_log, self.user());
                warn_gated!(gate, %user, error = %e, "inbox replay failed");
                self.queue.push(Outbound::Release(inbox));
                None
            }
        }
    }
}

/// Where a resume starts each room: the stored session's positions, overridden by the
/// client's (which are newer: the client saw them); a client position without an epoch
/// keeps the stored epoch of that room.
pub(super) fn merge_positions(
    stored: Option<&SessionRecord>,
    client: BTreeMap<String, Since>,
) -> BTreeMap<String, Since> {
    let mut wanted: BTreeMap<String, Since> = stored
        .map(|rec| {
            rec.rooms
                .iter()
                .map(|(room, at)| (room.clone(), Since::from(at.clone())))
                .collect()
        })
        .unwrap_or_default();
    for (room, pos) in client {
        let stored_epoch = wanted.get(&room).and_then(|s| s.epoch.clone());
        wanted.insert(
            room,
            Since {
                seq: pos.seq,
                epoch: pos.epoch.or(stored_epoch),
            },
        );
    }
    wanted
}
