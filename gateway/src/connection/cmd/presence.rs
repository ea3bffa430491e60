//! `presence`: who is in a room the connection has joined.

use super::{Handled, Refusal, Session};
use crate::protocol::command::Presence;
use crate::protocol::reply::{PresenceOk, Reply};
use crate::protocol::ErrorCode;

pub(super) async fn handle(s: &mut Session, cmd: Presence) -> Handled {
    s.check_room(&cmd.room)?;
    if !s.rooms.contains_key(cmd.room.as_str()) {
        return Err(Refusal::new(
            ErrorCode::NotJoined,
            "join the room to see who is in it",
        ));
    }
    let users = s.node.engine.presence(&cmd.room).await?;
    Ok(Reply::Presence(PresenceOk {
        room: cmd.room,
        users,
    })
    .into())
}
