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
    if !s.node.namespaces.of(&cmd.room).presence {
        return Err(s.deny(
            "presence",
            "presence is not tracked in this room's namespace",
        ));
    }
    let limit = s.node.config.limits.presence_users;
    let present = s.node.engine.presence_upto(&cmd.room, limit).await?;
    Ok(Reply::Presence(PresenceOk {
        room: cmd.room,
        users: present.users,
        count: present.count,
    })
    .into())
}
