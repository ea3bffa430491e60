//! `join`: subscribe to a room, optionally replaying from a position (`since`). Allowed by
//! the connection token's rooms claim, a subscription token in `token`, or the room's
//! namespace policy (`permissions`).

use super::{Handled, Outcome, Refusal, Session};
use crate::protocol::command::Join;
use crate::protocol::reply::{JoinOk, Reply};
use crate::protocol::{self, ErrorCode};
use std::sync::Arc;

pub(super) async fn handle(s: &mut Session, cmd: Join) -> Handled {
    s.check_room(&cmd.room)?;
    if protocol::is_inbox(&cmd.room) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "inboxes cannot be joined; your own inbox is always joined",
        ));
    }
    let room: Arc<str> = cmd.room.into();
    if s.rooms.contains_key(&room) {
        return Err(Refusal::new(ErrorCode::BadRequest, "already joined"));
    }
    s.room_to_spare()?;
    let sub = match &cmd.token {
        Some(token) => {
            let grant = s
                .node
                .auth
                .room_token(token, s.user(), &room)
                .map_err(|e| Refusal::new(ErrorCode::InvalidToken, e.to_string()))?;
            Some(grant)
        }
        None => None,
    };
    let member = s.decide_join(&room, sub.as_ref()).await?;
    let caught = s.enter_room(&room, cmd.since.as_ref(), member).await?;
    s.persist_soon();
    Ok(Outcome {
        reply: Reply::Join(JoinOk {
            room,
            at: caught.at,
            recovered: cmd.since.is_some().then_some(caught.recovered),
        }),
        // The reply goes out before the replay so the client sees the room's state first.
        then: vec![caught.replay],
    })
}
