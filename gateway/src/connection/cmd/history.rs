//! `history`: a page of a room's stored messages (or of the user's own inbox).

use super::{Handled, Refusal, Session};
use crate::engine::HistoryQuery;
use crate::protocol::command::History;
use crate::protocol::reply::{HistoryOk, Reply};
use crate::protocol::{self, ErrorCode};

/// Default `limit` of `history`.
const DEFAULT_LIMIT: usize = 50;

pub(super) async fn handle(s: &mut Session, cmd: History) -> Handled {
    s.check_room(&cmd.room)?;
    if protocol::is_inbox(&cmd.room) && *cmd.room != *s.inbox {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "only your own inbox can be read",
        ));
    }
    let limit = cmd
        .limit
        .unwrap_or(DEFAULT_LIMIT)
        .min(protocol::MAX_HISTORY_LIMIT);
    let query = HistoryQuery {
        since: cmd.since,
        before: cmd.before,
        limit,
    };
    let page = s.node.engine.history(&cmd.room, query).await?;
    Ok(Reply::History(HistoryOk {
        room: cmd.room,
        epoch: page.epoch,
        top: page.top,
        first: page.first,
        messages: page.messages.iter().map(|m| m.frame.clone()).collect(),
    })
    .into())
}
