//! `ack`: this device has its inbox up to a seq. Direct messages are replayed to a device
//! until it acknowledges them (bytes reaching a socket are not a read); a new device starts
//! after what any device of the user acknowledged.

use super::{Handled, Refusal, Session};
use crate::engine::HistoryQuery;
use crate::protocol::command::Ack;
use crate::protocol::reply::{AckOk, Reply};
use crate::protocol::{ErrorCode, StreamPosition};

pub(super) async fn handle(s: &mut Session, cmd: Ack) -> Handled {
    let inbox = s.inbox.clone();
    let page = s
        .node
        .engine
        .history(&inbox, HistoryQuery::default())
        .await?;
    let epoch = cmd.epoch.unwrap_or_else(|| page.epoch.clone());
    if epoch != page.epoch {
        // An ack of an epoch the inbox has left acknowledges nothing of the current one.
        let at = s
            .inbox_acked
            .clone()
            .filter(|a| a.epoch == page.epoch)
            .unwrap_or_else(|| StreamPosition::new(page.epoch, 0));
        return Ok(Reply::Ack(AckOk { room: inbox, at }).into());
    }
    if cmd.seq > page.top {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!(
                "seq {} is beyond the inbox's last message ({})",
                cmd.seq, page.top
            ),
        ));
    }
    s.acknowledge_inbox(StreamPosition::new(epoch, cmd.seq))
        .await?;
    let at = s
        .inbox_acked
        .clone()
        .unwrap_or_else(|| StreamPosition::new(page.epoch, cmd.seq));
    Ok(Reply::Ack(AckOk { room: inbox, at }).into())
}
