//! `send`: publish to a joined room or to a user's inbox (a direct message). The reply
//! comes once the message is stored, with its seq; a repeated `msg_id` is answered with
//! the original seq and `duplicate: true`.

use super::{Handled, Refusal, Session};
use crate::connection::session::random_hex;
use crate::engine::Publish;
use crate::protocol::command::Send;
use crate::protocol::reply::{Reply, SendOk};
use crate::protocol::{self, ErrorCode};
use crate::telemetry;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Longest client `msg_id`, in bytes.
const MAX_MSG_ID: usize = 128;
/// Longest `traceparent` accepted (longer ones are dropped, not refused).
const MAX_TRACEPARENT: usize = 128;

pub(super) async fn handle(s: &mut Session, cmd: Send) -> Handled {
    s.check_room(&cmd.room)?;
    let is_inbox = protocol::is_inbox(&cmd.room);
    if is_inbox && cmd.room.len() == protocol::INBOX_PREFIX.len() {
        return Err(Refusal::new(
            ErrorCode::InvalidRoom,
            "user:<id> needs a user id",
        ));
    }
    if !is_inbox && !s.rooms.contains_key(cmd.room.as_str()) {
        return Err(Refusal::new(
            ErrorCode::NotJoined,
            "join the room before sending",
        ));
    }
    let msg_id = match cmd.msg_id {
        Some(m) if m.is_empty() || m.len() > MAX_MSG_ID => {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("msg_id must be 1..{MAX_MSG_ID} bytes"),
            ))
        }
        Some(m) => m,
        None => random_hex(12),
    };
    let mut traceparent = cmd.traceparent.filter(|t| t.len() <= MAX_TRACEPARENT);
    let room: Arc<str> = cmd.room.into();
    let span = if telemetry::enabled() {
        let span = tracing::info_span!("send", room = %room, msg_id = %msg_id, user = %s.user, seq = tracing::field::Empty, trace_id = tracing::field::Empty);
        if let Some(tp) = &traceparent {
            telemetry::set_parent(&span, tp);
        }
        telemetry::record_trace_id(&span);
        // Receivers continue this trace: the send span's context rides in the message.
        traceparent = telemetry::traceparent(&span);
        span
    } else {
        tracing::Span::none()
    };
    let started = Instant::now();
    let published = s
        .node
        .engine
        .publish(Publish {
            room: room.clone(),
            from: s.user.clone(),
            msg_id: msg_id.clone(),
            body: cmd.body,
            traceparent,
        })
        .instrument(span.clone())
        .await?;
    span.record("seq", published.at.seq);
    let metrics = &s.node.metrics;
    metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    if !published.duplicate {
        metrics.received.inc();
    }
    Ok(Reply::Send(SendOk {
        room,
        at: published.at,
        msg_id,
        duplicate: published.duplicate,
    })
    .into())
}
