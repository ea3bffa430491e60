//! `refresh`: replaces the connection token (same user; its rooms claim and expiry take
//! effect at once) or, with `room`, a joined room's subscription token, before it expires.

use super::{Handled, Refusal, Session};
use crate::permissions::{self, Decision};
use crate::protocol::command::Refresh;
use crate::protocol::reply::{RefreshOk, Reply};
use crate::protocol::ErrorCode;
use std::sync::Arc;

pub(super) async fn handle(s: &mut Session, cmd: Refresh) -> Handled {
    let invalid = |e: crate::auth::AuthError| Refusal::new(ErrorCode::InvalidToken, e.to_string());
    if s.node.auth.insecure() {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "nothing to refresh: this gateway runs in insecure mode",
        ));
    }
    let Some(room) = cmd.room else {
        let identity = s
            .node
            .auth
            .connection_token(&cmd.token, Some(s.user()))
            .map_err(invalid)?;
        let expires_at = identity.expires_at.unwrap_or(0) * 1000;
        s.identity = identity;
        s.warned = false;
        return Ok(Reply::Refresh(RefreshOk {
            room: None,
            expires_at,
        })
        .into());
    };
    let room: Arc<str> = room.into();
    if !s.rooms.contains_key(&room) {
        return Err(Refusal::new(
            ErrorCode::NotJoined,
            "not joined to this room",
        ));
    }
    let grant = s
        .node
        .auth
        .room_token(&cmd.token, s.user(), &room)
        .map_err(invalid)?;
    let ns = s.node.namespaces.of(&room);
    let sub = Some((grant.rights, grant.expires_at));
    let member = match permissions::may_join(ns, &room, &s.identity, sub) {
        Decision::Allow(member) => member,
        Decision::Deny(reason) => return Err(s.deny("join", reason)),
        Decision::AskBackend => return Err(s.deny("join", "no backend decides joins here")),
    };
    if let Some(joined) = s.rooms.get_mut(&room) {
        joined.member = member;
        joined.warned = false;
    }
    Ok(Reply::Refresh(RefreshOk {
        room: Some(room),
        expires_at: grant.expires_at * 1000,
    })
    .into())
}
