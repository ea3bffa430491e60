//! `refresh`: replaces the connection token (same user; its expiry takes effect at once,
//! its rooms claim for later joins: joined rooms keep what their join granted) or, with
//! `room`, a joined room's subscription token, before it expires.

use super::{Handled, Refusal, Session};
use crate::hooks::{RefreshRequest, Verdict};
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
        let token_expiry = identity.expires_at.unwrap_or(0) * 1000;
        let expires_at = backend_expiry(s, None, token_expiry).await?;
        let mut identity = identity;
        // An earlier expiry from the backend shortens the connection's (whole seconds).
        identity.expires_at = identity.expires_at.map(|e| e.min(expires_at / 1000));
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
    let mut member = s.decide_join(&room, Some(&grant)).await?;
    let expires_at = backend_expiry(s, Some(&room), grant.expires_at * 1000).await?;
    member.expires_at = member.expires_at.map(|e| e.min(expires_at / 1000));
    let reply_expires_at = member.expires_at.map_or(expires_at, |e| e * 1000);
    if let Some(joined) = s.rooms.get_mut(&room) {
        joined.member = member;
        joined.warned = false;
    }
    Ok(Reply::Refresh(RefreshOk {
        room: Some(room),
        expires_at: reply_expires_at,
    })
    .into())
}

/// Asks the backend's refresh hook (if any) about a new token expiring at `expires_at`
/// (Unix ms); returns the expiry in force: the token's, or the backend's earlier one.
async fn backend_expiry(s: &Session, room: Option<&str>, expires_at: u64) -> Result<u64, Refusal> {
    let req = RefreshRequest {
        user: s.user(),
        room,
        expires_at,
    };
    match s.node.hooks.refresh(&s.node.metrics, &req).await {
        Verdict::Allow(answer) => Ok(answer.expires_at.map_or(expires_at, |e| e.min(expires_at))),
        Verdict::Deny(reason) => Err(s.deny("refresh", &reason)),
        Verdict::Failed(e) => Err(Refusal::new(ErrorCode::Unavailable, e.for_client())),
    }
}
