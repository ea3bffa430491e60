//! `resume`: restore an earlier session (from any node) and replay what was missed. The
//! stored session says which rooms and where; the client's positions override it. The
//! inbox comes first: it is already subscribed and only its replay is pending.
//!
//! Nothing fails half-way: once the stored session is taken, every room (the inbox
//! included) gets its own outcome, and a room that could not be caught up is left
//! entirely (or, for the inbox, its held-back live messages are released).

use super::{Handled, Outcome, Refusal, Session};
use crate::auth::{Rights, RoomGrant};
use crate::connection::catchup::{merge_positions, CaughtUp, Replay};
use crate::connection::session::Hex;
use crate::control::Control;
use crate::engine::{StoredGrant, TakenSession};
use crate::log_gate::warn_gated;
use crate::outbound::Outbound;
use crate::protocol::command::Resume;
use crate::protocol::reply::{Reply, ResumeOk, RoomResumed};
use crate::protocol::{self, ErrorCode, Since, StreamPosition};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub(super) async fn handle(s: &mut Session, cmd: Resume) -> Handled {
    // More positions than rooms a connection can hold (and its inbox) cannot all be
    // resumed; each would cost a join decision, the backend's hook among them. Refused
    // before the stored session is taken, so the token stays good.
    let max = s.node.config.limits.rooms_per_connection + 1;
    if cmd.positions.len() > max {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("at most {max} positions: limits.roomsPerConnection rooms and the inbox"),
        ));
    }
    // Each resume catches up every room it names again (a head read each, the join hook
    // for a room it refused): repeated on one connection, that is up to a hundred engine
    // or backend calls per command. A client resumes once, after its welcome; one
    // refused before any room (unknown token, another user's, the store unreachable) may
    // be tried again.
    if s.resumed {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "one resume per connection: reconnect to resume again",
        ));
    }
    // Taking its own session would leave this connection saving under a spent token.
    if Hex::parse(&cmd.resume_token) == Some(s.resume_token) {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "that is this connection's own resume token: resume an earlier connection's",
        ));
    }
    let engine = s.node.engine.clone();
    let record = match engine.take_session(&cmd.resume_token, s.user()).await? {
        TakenSession::Taken(record) => {
            s.node.session_resumed(s.user(), &cmd.resume_token);
            if record.open {
                close_left_behind(s, &cmd.resume_token).await;
            }
            Some(record)
        }
        // Left in the store as it was.
        TakenSession::OtherUsers => {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "resume token belongs to another user",
            ));
        }
        TakenSession::Missing if cmd.positions.is_empty() => {
            return Err(Refusal::new(
                ErrorCode::SessionNotFound,
                "resume token unknown or expired; join rooms again",
            ));
        }
        // Nothing stored: an expired or unknown token, or one whose connection may still
        // be open: one that never saved (only direct messages, only the connect hook's
        // rooms) or whose last save expired (`sessions.resumeTtl` after its last join).
        // The resume goes on from the client's positions, so it is told all the same.
        TakenSession::Missing => {
            close_left_behind(s, &cmd.resume_token).await;
            None
        }
    };
    s.resumed = true;
    let grants = record
        .as_ref()
        .map(|r| r.grants.clone())
        .unwrap_or_default();
    let mut wanted = merge_positions(record.as_ref(), cmd.positions);
    let mut rooms = BTreeMap::new();
    let mut then = Vec::new();
    match wanted.remove(&*s.inbox) {
        Some(since) if s.inbox_pending => {
            let (outcome, replay) = resume_inbox(s, &since).await;
            rooms.insert(s.inbox.to_string(), outcome);
            then.extend(replay);
        }
        // The inbox was already replayed from the cursor; earlier gaps cannot be filled
        // on this connection without reordering.
        Some(_) => {
            rooms.insert(s.inbox.to_string(), RoomResumed::too_late());
        }
        None if s.inbox_pending => then.extend(s.replay_inbox_from_cursor().await),
        None => {}
    }
    for (room, since) in wanted {
        let grant = grants.get(&room).cloned();
        // A room this connection already stands in past the client's position (the
        // connect hook's rooms, joined at welcome at their top; a plain join before the
        // resume): the writer is past the gap and never writes below what it wrote, so
        // nothing of it would reach the client. Caught up from where the connection
        // stands, and said plainly: `recovered: false`, read the gap with `history`.
        let ahead = s
            .rooms
            .get(room.as_str())
            .filter(|j| since.epoch.as_deref().is_none_or(|e| e == &*j.at.epoch))
            .filter(|j| j.at.seq > since.seq)
            .map(|j| Since {
                seq: j.at.seq,
                epoch: Some(j.at.epoch.clone()),
            });
        let gap = ahead.is_some();
        let since = ahead.unwrap_or(since);
        let resumed = match resume_room(s, &room, &since, grant).await {
            Ok(caught) => {
                then.push(caught.replay);
                RoomResumed::CaughtUp {
                    recovered: caught.recovered && !gap,
                    at: caught.at,
                }
            }
            Err(refusal) => RoomResumed::refused(refusal.code, refusal.message),
        };
        rooms.insert(room, resumed);
    }
    // Saved at once (a node that dies mid-replay leaves this record): each room at where
    // its replay starts, none of which has been delivered yet.
    s.persist(&HashMap::new(), true).await;
    Ok(Outcome {
        reply: Reply::Resume(ResumeOk { rooms }),
        then,
    })
}

/// The connection that last saved the session taken was open then, or saved nothing the
/// store still has, and may still be open: its client moved on without closing it (a
/// socket that died without a close stays open until the heartbeat's timeout), or a copy
/// of the client took over its token. It is told to close (4409) on whichever node holds
/// it, and its close stores nothing. A session its connection's close saved is not:
/// nothing is left to close, and a reconnect storm (a rolling update's drain) sends no
/// message per resume to every node.
async fn close_left_behind(s: &Session, token: &str) {
    let msg = Control::SessionResumed {
        user: s.user().to_string(),
        token: token.to_string(),
    };
    if let Err(e) = crate::control::send(&s.node, &msg).await {
        let (gate, user) = (&s.node.connection_failure_log, s.user());
        warn_gated!(gate, %user, error = %e, "the connection a resume left behind not told to close");
    }
}

/// The inbox from the device's position: the position it resumes from is one it has, so
/// it counts as an acknowledgement. A position history no longer covers (retention, a new
/// epoch) replays what no device acknowledged instead, reported `recovered: false`.
async fn resume_inbox(s: &mut Session, since: &Since) -> (RoomResumed, Option<Replay>) {
    s.inbox_pending = false;
    let inbox = s.inbox.clone();
    let head = s.inbox_head.take().map(|page| *page);
    let caught = match s.catch_up(&inbox, Some(since), head).await {
        Ok(caught) => caught,
        Err(e) => {
            // Nothing may stay held back: live direct messages flow again; nothing was
            // acknowledged, so a later resume replays what this one could not. From this
            // device's position, which its session keeps (the stored record was taken
            // with the old token): the user's cursor may be past what it got.
            s.queue.push(Outbound::Release(inbox));
            if let (None, Some(epoch)) = (&s.inbox_acked, &since.epoch) {
                s.inbox_acked = Some(StreamPosition::new(epoch.clone(), since.seq));
            }
            let refusal = Refusal::from(e);
            return (RoomResumed::refused(refusal.code, refusal.message), None);
        }
    };
    if !caught.recovered {
        let replay = s.replay_inbox_from_cursor().await;
        let outcome = RoomResumed::CaughtUp {
            recovered: false,
            at: caught.at,
        };
        return (outcome, replay);
    }
    let at = StreamPosition::new(caught.at.epoch.clone(), since.seq);
    if let Err(e) = s.acknowledge_inbox(at).await {
        tracing::debug!(user = %s.user(), error = %e, "inbox cursor not advanced");
    }
    let outcome = RoomResumed::CaughtUp {
        recovered: true,
        at: caught.at,
    };
    (outcome, Some(caught.replay))
}

/// Re-enters one room of the resumed session. Permissions are checked again (the token
/// may grant less now); a subscription token's grant stored with the session counts until
/// its expiry, while the key that signed it is in force.
async fn resume_room(
    s: &mut Session,
    room: &str,
    since: &Since,
    grant: Option<StoredGrant>,
) -> Result<CaughtUp, Refusal> {
    s.check_room(room)?;
    if protocol::is_inbox(room) {
        return Err(Refusal::new(ErrorCode::Forbidden, "not your inbox"));
    }
    let room: Arc<str> = room.into();
    let member = match s.rooms.get(&room) {
        Some(joined) => joined.member.clone(),
        None => {
            s.room_to_spare()?;
            let now = crate::engine::now_ms() / 1000;
            let auth = &s.node.auth;
            let sub = grant
                .filter(|g| g.expires_at > now)
                .filter(|g| g.kid.as_deref().is_none_or(|kid| auth.has_kid(kid)))
                .map(|g| RoomGrant {
                    rights: Rights {
                        join: true,
                        send: g.send,
                    },
                    expires_at: g.expires_at,
                    kid: g.kid.map(Into::into),
                });
            s.decide_join(&room, sub.as_ref()).await?
        }
    };
    s.enter_room(&room, Some(since), member).await
}
