//! `send`: publish to a joined room or to a user's inbox (a direct message). The reply
//! comes once the message is stored, with its seq; a repeated `msg_id` is answered with
//! the original seq and `duplicate: true`.

use super::{Handled, Refusal, Session};
use crate::config::{DmPolicy, NamespaceConfig};
use crate::connection::session::new_msg_id;
use crate::engine::{HistoryQuery, Publish, EMPTY_EPOCH};
use crate::hooks::{SendAnswer, SendRequest, Verdict};
use crate::protocol::command::Send;
use crate::protocol::reply::{Reply, SendOk};
use crate::protocol::{self, ErrorCode};
use crate::room_starts::Reserved;
use crate::telemetry;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Longest client `msg_id`, in bytes.
const MAX_MSG_ID: usize = 128;

pub(super) async fn handle(s: &mut Session, cmd: Send) -> Handled {
    s.check_room(&cmd.room)?;
    let inbox_owner =
        protocol::inbox_owner(&cmd.room).map_err(|e| Refusal::new(ErrorCode::InvalidRoom, e))?;
    if let Some(recipient) = inbox_owner {
        may_dm(s, &recipient).await?;
    } else {
        let Some(joined) = s.rooms.get(cmd.room.as_str()) else {
            return Err(Refusal::new(
                ErrorCode::NotJoined,
                "join the room before sending",
            ));
        };
        if !joined.member.send {
            return Err(s.deny("send", "you may read this room but not send to it"));
        }
    }
    // Looked up once: the body cap, the new-room bound and a hook's replacement use it.
    let ns = s.node.namespaces.of(&cmd.room);
    let max_body = ns.max_body_bytes;
    if max_body > 0 && cmd.body.get().len() > max_body {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("body larger than {max_body} bytes"),
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
        None => new_msg_id(),
    };
    let reserved = may_start(s, ns, &cmd.room).await?;
    // Only a well-formed W3C traceparent goes on (dropped, not refused, otherwise): it
    // rides in the pub/sub payload and the msg frame of every member.
    let mut traceparent = cmd.traceparent.filter(|t| protocol::valid_traceparent(t));
    // A joined room's name as the session holds it, the hub's copy: each member's write
    // order then finds the room by pointer (outbound/order.rs).
    let room: Arc<str> = match s.rooms.get_key_value(cmd.room.as_str()) {
        Some((name, _)) => name.clone(),
        None => cmd.room.into(),
    };
    // Before the send hook: its call is part of the message's trace.
    let span = if telemetry::enabled() {
        let span = tracing::info_span!("send", room = %room, msg_id = %msg_id, user = %s.user(), seq = tracing::field::Empty, trace_id = tracing::field::Empty);
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
    let body = if s.node.hooks.sends_through(&room) {
        backend_body(s, ns, &room, &msg_id, cmd.body)
            .instrument(span.clone())
            .await?
    } else {
        cmd.body
    };
    let copy = s.node.hooks.wants_messages().then(|| body.clone());
    let started = Instant::now();
    let published = s
        .node
        .engine
        .publish(Publish {
            room: room.clone(),
            from: s.user().to_string(),
            msg_id: msg_id.clone(),
            body,
            traceparent,
        })
        .instrument(span.clone())
        .await;
    // Failed and timed-out publishes too: left out, the p99 fell as the store got worse.
    let metrics = &s.node.metrics;
    metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    let published = published?;
    span.record("seq", published.at.seq);
    if !published.duplicate {
        metrics.received.inc();
        if !published.ephemeral && published.at.seq == 1 {
            let starts = &s.node.room_starts;
            starts.started(&*s.node.engine, s.user(), reserved).await;
        }
    }
    if let Some(body) = copy {
        s.node
            .hooks
            .message_stored(&room, s.user(), &msg_id, body, &published);
    }
    Ok(Reply::Send(SendOk {
        room,
        at: (!published.ephemeral).then_some(published.at),
        msg_id,
        duplicate: published.duplicate,
    })
    .into())
}

/// A user past `limits.newRoomsPerHour` sends only to rooms and inboxes that have
/// messages: a room's first message creates keys kept for days, and one connection could
/// start rooms at its command rate (docs/operations.md, "Redis memory"). A send holds one
/// of the user's starts while it runs (given back unless it started a room); the store is
/// read only for a user with none left, whose send goes on holding nothing.
async fn may_start<'a>(
    s: &'a Session,
    ns: &NamespaceConfig,
    room: &str,
) -> Result<Option<Reserved<'a>>, Refusal> {
    if !ns.keep_history {
        return Ok(None);
    }
    if let Some(reserved) = s.node.room_starts.reserve(s.user()) {
        return Ok(Some(reserved));
    }
    let head = HistoryQuery {
        limit: 1,
        max_bytes: 1,
        ..Default::default()
    };
    let page = s.node.engine.history(room, head).await?;
    if page.top > 0 || &*page.epoch != EMPTY_EPOCH {
        return Ok(None);
    }
    s.node.metrics.new_rooms_refused.inc();
    let n = s.node.room_starts.per_hour();
    Err(Refusal::new(
        ErrorCode::QuotaExceeded,
        format!(
            "you started {n} rooms or inboxes in the last hour (limits.newRoomsPerHour); \
             send to one with messages"
        ),
    ))
}

/// Asks the backend's send hook: refused, or the body to store (the sent one, or the
/// backend's replacement, held to the same depth and size rules).
async fn backend_body(
    s: &Session,
    ns: &NamespaceConfig,
    room: &str,
    msg_id: &str,
    body: Box<serde_json::value::RawValue>,
) -> Result<Box<serde_json::value::RawValue>, Refusal> {
    let req = SendRequest {
        user: s.user(),
        room,
        msg_id,
        body: &body,
    };
    match s.node.hooks.send(&s.node.metrics, &req).await {
        Verdict::Allow(SendAnswer { body: Some(new) }) => {
            let new = serde_json::value::to_raw_value(&new)
                .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
            // The limits a client's body is held to: a replacement is the same message.
            let max = match ns.max_body_bytes {
                0 => s.node.config.limits.max_frame_bytes,
                n => n.min(s.node.config.limits.max_frame_bytes),
            };
            if protocol::command::nesting_depth(new.get()) > protocol::MAX_BODY_DEPTH
                || new.get().len() > max
            {
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    "the backend's replacement body is too deep or too large",
                ));
            }
            Ok(new)
        }
        Verdict::Allow(SendAnswer { body: None }) => Ok(body),
        Verdict::Deny(reason) => Err(s.deny("send", &reason)),
        Verdict::Failed(e) => Err(Refusal::new(ErrorCode::Unavailable, e.for_client())),
    }
}

/// Whether the session's user may send a direct message to `recipient` (the inbox
/// namespace's `dm` policy).
async fn may_dm(s: &Session, recipient: &str) -> Result<(), Refusal> {
    let ns = s.node.namespaces.of(protocol::INBOX_PREFIX);
    match &ns.dm {
        DmPolicy::Anyone => return Ok(()),
        DmPolicy::Claim(claim) if s.identity.claims.lists(claim, recipient) => return Ok(()),
        DmPolicy::Claim(_) => {
            return Err(s.deny("dm", "your token's claim does not list this user"))
        }
        DmPolicy::SharedRoom => {}
    }
    if recipient == s.user() {
        return Ok(());
    }
    // Every room is asked at once (one round trip for all, not one per room), and the
    // first that has the recipient decides. A lookup that failed refuses the DM only
    // when no other room has them.
    let mut lookups: FuturesUnordered<_> = s
        .rooms
        .keys()
        .filter(|room| s.node.namespaces.of(room).presence)
        .map(|room| s.node.engine.is_present(room, recipient))
        .collect();
    let mut failed = None;
    while let Some(present) = lookups.next().await {
        match present {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Err(s.deny("dm", "you share no room with this user")),
    }
}
