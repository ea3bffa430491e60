//! Connection: one client socket. This task reads frames and runs commands; a second task
//! (see [`outbound`](crate::outbound)) writes everything the client receives.
//!
//! - this file: the socket loop — classify a frame, rate limit, error streak, teardown;
//! - [`session`]: the per-connection state and room membership;
//! - [`cmd`]: one handler per command, each returning the reply and what follows it;
//! - [`catchup`]: replaying what a client missed before its live messages.

mod catchup;
pub mod cmd;
pub mod session;

#[cfg(test)]
mod tests;

use crate::disconnect::{self, CloseReason};
use crate::node::{IpSlot, Node};
use crate::outbound::{self, OutboundQueue, WriterSettings};
use crate::protocol::{self, error_frame, ok_frame, Command, ErrorCode};
use crate::ratelimit::TokenBucket;
use futures_util::{Stream, StreamExt};
use session::Session;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message};

/// How long after `welcome` a client may send `resume` before its inbox is replayed from
/// the user's inbox cursor (any other first command replays it at once).
pub const RESUME_GRACE: Duration = Duration::from_secs(1);

/// What one frame from the client means for the loop.
enum Frame {
    /// A text frame: a command.
    Text(tungstenite::Utf8Bytes),
    /// Nothing for the loop (pings, pongs).
    Skip,
    /// The client closed, or the socket failed.
    Gone,
    /// A protocol violation: close with this reason.
    Refuse(CloseReason),
}

fn classify(msg: Option<Result<Message, tungstenite::Error>>, conn: u64) -> Frame {
    match msg {
        None | Some(Ok(Message::Close(_))) => Frame::Gone,
        Some(Ok(Message::Text(text))) => Frame::Text(text),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Frame::Skip,
        Some(Ok(Message::Binary(_))) => Frame::Refuse(disconnect::BINARY_FRAME),
        Some(Err(tungstenite::Error::Capacity(_))) => Frame::Refuse(disconnect::MESSAGE_TOO_BIG),
        Some(Err(tungstenite::Error::Utf8(_))) => Frame::Refuse(disconnect::INVALID_UTF8),
        Some(Err(e)) => {
            tracing::debug!(conn, error = %e, "read failed");
            Frame::Gone
        }
    }
}

/// Serves one upgraded socket until it closes.
pub async fn serve<S>(node: Arc<Node>, ws: S, user: String, _slot: IpSlot)
where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + futures_util::Sink<Message, Error = tungstenite::Error>
        + Unpin
        + Send
        + 'static,
{
    let limits = &node.config.limits;
    let (queue, rx) = outbound::queue(limits.outbound_queue_frames, limits.outbound_queue_bytes);
    let id = node.register(queue.clone());
    node.metrics.accepted.inc();
    let (sink, mut stream) = ws.split();
    let started = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let mut session = Session::new(node.clone(), id, user, queue.clone());
    let writer = tokio::spawn(outbound::run_writer(
        sink,
        rx,
        writer_settings(&node, &session, last_seen.clone(), started),
    ));
    Box::pin(session.welcome()).await;

    let mut bucket = TokenBucket::new(limits.message_rate, limits.message_burst);
    let mut errors_in_row = 0u32;
    let grace = tokio::time::sleep(RESUME_GRACE);
    tokio::pin!(grace);
    let closing = queue.closing().clone();
    loop {
        let msg = tokio::select! {
            _ = closing.cancelled() => break,
            _ = &mut grace, if session.inbox_pending => {
                Box::pin(session.replay_inbox_from_cursor()).await;
                continue;
            }
            msg = stream.next() => msg,
        };
        last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let text = match classify(msg, id) {
            Frame::Text(text) => text,
            Frame::Skip => continue,
            Frame::Gone => break,
            Frame::Refuse(reason) => {
                if reason == disconnect::MESSAGE_TOO_BIG {
                    node.metrics.drops.with_label_values(&["oversize"]).inc();
                }
                queue.close(reason);
                break;
            }
        };
        node.metrics.commands.inc();
        let client_fault = if bucket.take() {
            run_command(&mut session, &queue, &text).await
        } else {
            node.metrics
                .drops
                .with_label_values(&["rate_limited"])
                .inc();
            queue.frame(error_frame(
                protocol::command::salvage_id(&text).as_ref(),
                ErrorCode::RateLimited,
                "over the command rate limit; slow down",
            ));
            true
        };
        errors_in_row = if client_fault { errors_in_row + 1 } else { 0 };
        if errors_in_row > limits.max_errors_in_row {
            queue.close(disconnect::TOO_MANY_ERRORS);
            break;
        }
    }

    if queue.close_reason().is_none() {
        queue.closing().cancel(); // the client left; nothing more to write
    }
    let written = match writer.await {
        Ok(outcome) => outcome.positions,
        Err(e) => {
            tracing::error!(conn = id, error = %e, "writer task failed");
            Default::default()
        }
    };
    let reason = queue
        .close_reason()
        .map_or(disconnect::CLIENT_CLOSED, |r| r.reason);
    if reason == disconnect::SLOW_CONSUMER.reason {
        node.metrics
            .drops
            .with_label_values(&["slow_consumer"])
            .inc();
    }
    node.metrics.closed.with_label_values(&[reason]).inc();
    Box::pin(session.close(&written)).await;
    node.unregister(id);
}

/// Parses and runs one command and queues its reply (then what follows it). Returns
/// whether the client was at fault (for the error streak).
async fn run_command(session: &mut Session, queue: &OutboundQueue, text: &str) -> bool {
    let cmd = match Command::parse(text) {
        Ok(cmd) => cmd,
        Err(err) => {
            queue.frame(error_frame(err.id.as_ref(), err.code, &err.message));
            return true;
        }
    };
    let id = cmd.id().clone();
    match session.handle(cmd).await {
        Ok(outcome) => {
            queue.frame(ok_frame(&id, &outcome.reply));
            for item in outcome.then {
                queue.push(item);
            }
            false
        }
        Err(refusal) => {
            queue.frame(error_frame(Some(&id), refusal.code, &refusal.message));
            // Only the client's own faults count towards the abuse limit: an engine
            // outage must not get well-behaved clients disconnected.
            !refusal.code.is_server_fault()
        }
    }
}

/// What the writer needs: the heartbeat, where the reader notes activity, and the
/// callbacks that advance the inbox cursor and count deliveries.
fn writer_settings(
    node: &Arc<Node>,
    session: &Session,
    last_seen: Arc<AtomicU64>,
    started: Instant,
) -> WriterSettings {
    let on_inbox = {
        let engine = node.engine.clone();
        let user = session.user().to_string();
        Box::new(move |seq: u64| {
            let engine = engine.clone();
            let user = user.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.ack_inbox(&user, seq).await {
                    tracing::debug!(%user, seq, error = %e, "inbox cursor not advanced");
                }
            });
        })
    };
    let delivered = node.metrics.delivered.clone();
    let delivery_seconds = node.metrics.delivery_seconds.clone();
    WriterSettings {
        heartbeat: node.config.heartbeat.interval,
        last_seen,
        epoch: started,
        on_inbox: Some(on_inbox),
        inbox: session.inbox.clone(),
        on_delivered: Box::new(move |env| {
            delivered.inc();
            if env.ts > 0 {
                let ms = crate::engine::now_ms().saturating_sub(env.ts);
                delivery_seconds.observe(ms as f64 / 1000.0);
            }
        }),
    }
}
