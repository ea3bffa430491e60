//! `resume`: restore an earlier session (from any node) and replay what was missed. The
//! stored session says which rooms and where; the client's positions override it. The
//! inbox comes first: it is already subscribed and only its replay is pending.

use super::{Handled, Outcome, Refusal, Session};
use crate::connection::catchup::merge_positions;
use crate::protocol::command::Resume;
use crate::protocol::reply::{Reply, ResumeOk, RoomResumed};
use crate::protocol::{self, ErrorCode, Since};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub(super) async fn handle(s: &mut Session, cmd: Resume) -> Handled {
    let engine = s.node.engine.clone();
    let record = engine.take_session(&cmd.resume_token).await?;
    match &record {
        Some(rec) if rec.user != s.user => {
            // Not ours: put it back untouched.
            engine.save_session(&cmd.resume_token, rec).await?;
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "resume token belongs to another user",
            ));
        }
        None if cmd.positions.is_empty() => {
            return Err(Refusal::new(
                ErrorCode::SessionNotFound,
                "resume token unknown or expired; join rooms again",
            ));
        }
        _ => {}
    }
    let mut wanted = merge_positions(record.as_ref(), cmd.positions);
    let mut rooms = BTreeMap::new();
    let mut then = Vec::new();
    match wanted.remove(&*s.inbox) {
        Some(since) if s.inbox_pending => {
            s.inbox_pending = false;
            let inbox = s.inbox.clone();
            let caught = s.catch_up(&inbox, Some(&since)).await?;
            rooms.insert(
                inbox.to_string(),
                RoomResumed::CaughtUp {
                    recovered: caught.recovered,
                    at: caught.at,
                },
            );
            then.push(caught.replay);
        }
        // The inbox was already replayed from the cursor; earlier gaps cannot be filled
        // on this connection without reordering.
        Some(_) => {
            rooms.insert(s.inbox.to_string(), RoomResumed::too_late());
        }
        None if s.inbox_pending => s.replay_inbox_from_cursor().await,
        None => {}
    }
    for (room, since) in wanted {
        let resumed = match resume_room(s, &room, &since).await {
            Ok(caught) => {
                then.push(caught.replay);
                RoomResumed::CaughtUp {
                    recovered: caught.recovered,
                    at: caught.at,
                }
            }
            Err(refusal) => RoomResumed::refused(refusal.code, refusal.message),
        };
        rooms.insert(room, resumed);
    }
    s.persist(&HashMap::new()).await;
    Ok(Outcome {
        reply: Reply::Resume(ResumeOk { rooms }),
        then,
    })
}

async fn resume_room(
    s: &mut Session,
    room: &str,
    since: &Since,
) -> Result<super::super::catchup::CaughtUp, Refusal> {
    s.check_room(room)?;
    if protocol::is_inbox(room) {
        return Err(Refusal::new(ErrorCode::Forbidden, "not your inbox"));
    }
    let room: Arc<str> = room.into();
    s.enter_room(&room, Some(since)).await
}
