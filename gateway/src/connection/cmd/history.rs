//! `history`: a page of a room's stored messages (or of the user's own inbox).

use super::{Handled, Refusal, Session};
use crate::engine::HistoryQuery;
use crate::permissions::{self, Decision};
use crate::protocol::command::History;
use crate::protocol::reply::{HistoryOk, Reply};
use crate::protocol::{self, ErrorCode};

/// Default `limit` of `history`.
const DEFAULT_LIMIT: usize = 50;

pub(super) async fn handle(s: &mut Session, cmd: History) -> Handled {
    s.check_room(&cmd.room)?;
    if protocol::is_inbox(&cmd.room) {
        if *cmd.room != *s.inbox {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only your own inbox can be read",
            ));
        }
    } else if !s.rooms.contains_key(cmd.room.as_str()) {
        let ns = s.node.namespaces.of(&cmd.room);
        match permissions::may_read_without_joining(ns, &cmd.room, &s.identity) {
            Decision::Allow(_) => {}
            Decision::Deny(reason) => return Err(s.deny("history", reason)),
            Decision::AskBackend => return Err(s.deny("history", "join the room first")),
        }
    }
    let limit = cmd
        .limit
        .unwrap_or(DEFAULT_LIMIT)
        .min(protocol::MAX_HISTORY_LIMIT);
    // Bytes as well as count: 500 messages of 64 KiB would be a 32 MB frame.
    let query = HistoryQuery {
        since: cmd.since,
        before: cmd.before,
        limit,
        max_bytes: s.node.config.limits.history_page_cap(),
    };
    let page = crate::engine::page(&*s.node.engine, &cmd.room, query).await?;
    Ok(Reply::History(HistoryOk {
        room: cmd.room,
        epoch: page.epoch,
        top: page.top,
        first: page.first,
        more: page.more,
        messages: page.messages.iter().map(|m| m.frame.clone()).collect(),
    })
    .into())
}
