//! Catch-up: replaying what a client missed in a room before its live messages.
//!
//! The order that makes this gap-free: the writer starts holding the room's live messages
//! (`BeginCatchup`), the node subscribes, history is read, the reply goes out, then the
//! replay; the writer writes the replay, then the held live messages, and drops any seq it
//! already wrote. Joins and resumes enter rooms through the one path here.

use super::cmd::Refusal;
use super::session::Session;
use crate::engine::{EngineError, HistoryQuery, SessionRecord};
use crate::outbound::Outbound;
use crate::protocol::{ErrorCode, Since, StreamPosition};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a room stands after a catch-up, and the replay that brings the client there.
pub(super) struct CaughtUp {
    /// Everything after the client's position is in the replay.
    pub recovered: bool,
    /// The room's epoch and top seq.
    pub at: StreamPosition,
    /// The `Outbound::Replay` to queue after the reply.
    pub replay: Outbound,
}

impl Session {
    /// Reads what a client at `since` missed (nothing, without `since`).
    pub(super) async fn catch_up(
        &self,
        room: &Arc<str>,
        since: Option<&Since>,
    ) -> Result<CaughtUp, EngineError> {
        let query = HistoryQuery {
            since: since.map(|s| s.seq),
            before: None,
            limit: if since.is_some() { usize::MAX } else { 0 },
        };
        let page = self.node.engine.history(room, query).await?;
        let recovered = since.is_some_and(|s| page.covers(s.seq, s.epoch.as_deref()));
        let (from, msgs) = match since {
            Some(s) if recovered => (s.seq, page.messages),
            _ => (page.top, Vec::new()),
        };
        Ok(CaughtUp {
            recovered,
            at: StreamPosition::new(page.epoch.clone(), page.top),
            replay: Outbound::Replay {
                room: room.clone(),
                from: StreamPosition::new(page.epoch, from),
                msgs,
            },
        })
    }

    /// Joins a room (or catches up a room already joined) from `since`: the one path of
    /// `join` and `resume`. On failure the connection is out of the room.
    pub(super) async fn enter_room(
        &mut self,
        room: &Arc<str>,
        since: Option<&Since>,
    ) -> Result<CaughtUp, Refusal> {
        if self.rooms.contains_key(room) {
            self.queue.push(Outbound::BeginCatchup(room.clone()));
        } else {
            let max = self.node.config.limits.rooms_per_connection;
            if self.rooms.len() >= max {
                return Err(Refusal::new(
                    ErrorCode::TooManyRooms,
                    format!("at most {max} rooms per connection"),
                ));
            }
            self.attach(room).await?;
        }
        match self.catch_up(room, since).await {
            Ok(caught) => {
                self.rooms.insert(room.clone(), caught.at.clone());
                Ok(caught)
            }
            Err(e) => {
                self.detach(room).await;
                Err(e.into())
            }
        }
    }

    /// Replays the inbox from the user's inbox cursor (no `resume` said otherwise). On an
    /// engine error the held-back inbox messages are released without a replay.
    pub(super) async fn replay_inbox_from_cursor(&mut self) {
        self.inbox_pending = false;
        let inbox = self.inbox.clone();
        let replay = async {
            let cursor = self.node.engine.inbox_cursor(&self.user).await?;
            self.catch_up(
                &inbox,
                Some(&Since {
                    seq: cursor,
                    epoch: None,
                }),
            )
            .await
        }
        .await;
        match replay {
            Ok(caught) => {
                self.queue.push(caught.replay);
            }
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "inbox replay failed");
                self.queue.push(Outbound::Release(inbox));
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
