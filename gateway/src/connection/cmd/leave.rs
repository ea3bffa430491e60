//! `leave`: out of a room (presence announces it when it was the user's last connection).

use super::{Handled, Refusal, Session};
use crate::protocol::command::Leave;
use crate::protocol::reply::{LeaveOk, Reply};
use crate::protocol::ErrorCode;
use std::sync::Arc;

pub(super) async fn handle(s: &mut Session, cmd: Leave) -> Handled {
    s.check_room(&cmd.room)?;
    let room: Arc<str> = cmd.room.into();
    if !s.rooms.contains_key(&room) {
        return Err(Refusal::new(
            ErrorCode::NotJoined,
            "not joined to this room",
        ));
    }
    s.detach(&room).await;
    s.persist_soon();
    Ok(Reply::Leave(LeaveOk { room }).into())
}
