//! `ping`: the app-level keep-alive (browsers cannot send WebSocket pings).

use super::Handled;
use crate::protocol::command::Ping;
use crate::protocol::reply::{Pong, Reply};

pub(super) fn handle(_cmd: Ping) -> Handled {
    Ok(Reply::Pong(Pong {
        pong: true,
        ts: crate::engine::now_ms(),
    })
    .into())
}
