//! Connection: one client socket. This task reads frames and runs commands; a second task
//! (see [`outbound`]) writes everything the client receives.
//!
//! - this file: the socket loop — classify a frame, rate limit, error streak, teardown;
//! - [`session`]: the per-connection state and room membership;
//! - [`cmd`]: one handler per command, each returning the reply and what follows it;
//! - [`catchup`]: replaying what a client missed before its live messages.
//!
//! While a command's output is queued (a replay goes at the client's pace, possibly for a
//! long time) the socket is still read: pongs keep the heartbeat alive, and commands wait
//! in a small backlog until it is their turn.

mod catchup;
pub mod cmd;
mod expiry;
pub mod session;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bounded;
#[cfg(test)]
mod tests_dm;
#[cfg(test)]
mod tests_faulty;
#[cfg(test)]
mod tests_footprint;
#[cfg(test)]
mod tests_left_behind;
#[cfg(test)]
mod tests_presence;
#[cfg(test)]
mod tests_pump;
#[cfg(test)]
mod tests_resume;
#[cfg(test)]
mod tests_resume_save;

use crate::auth::Identity;
use crate::control::ConnCtl;
use crate::disconnect::{self, CloseReason};
use crate::hooks::ConnectAnswer;
use crate::node::{Node, Slots};
use crate::outbound::{self, Outbound, OutboundQueue, WriterSettings};
use crate::protocol::{self, error_frame, ok_frame, Command, ErrorCode};
use crate::ratelimit::TokenBucket;
use catchup::Replay;
use futures_util::future::OptionFuture;
use futures_util::{Stream, StreamExt};
use session::Session;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
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
        Some(Err(e)) => match crate::inbound::refusal(&e) {
            Some(reason) => Frame::Refuse(reason),
            None => {
                tracing::debug!(conn, error = %e, "read failed");
                Frame::Gone
            }
        },
    }
}

/// The tokio instant of a Unix-ms deadline (far away when there is none).
fn instant_of(deadline_ms: Option<u64>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    match deadline_ms {
        Some(at) => now + Duration::from_millis(at.saturating_sub(crate::engine::now_ms())),
        None => now + Duration::from_secs(365 * 24 * 3600),
    }
}

/// The reading half of the socket and what reading it updates.
struct Reader<S> {
    stream: futures_util::stream::SplitStream<S>,
    node: Arc<Node>,
    id: u64,
    queue: OutboundQueue,
}

/// What one read means for the loop.
enum Read {
    Command(tungstenite::Utf8Bytes),
    Skip,
    Stop,
}

impl<S> Reader<S> {
    fn take(&self, msg: Option<Result<Message, tungstenite::Error>>) -> Read {
        self.queue.heard(self.node.clock_ms());
        match classify(msg, self.id) {
            Frame::Text(text) => Read::Command(text),
            Frame::Skip => Read::Skip,
            Frame::Gone => Read::Stop,
            Frame::Refuse(reason) => {
                if reason == disconnect::MESSAGE_TOO_BIG {
                    self.node
                        .metrics
                        .drops
                        .with_label_values(&["oversize"])
                        .inc();
                }
                self.queue.close(reason);
                Read::Stop
            }
        }
    }
}

/// Commands read while a command's output was still being queued wait here; beyond this
/// many, or once they hold `limits.maxFrameBytes` (see [`backlog_full`]), the socket is
/// not read until they ran (TCP pushes back on the client).
const MAX_BACKLOG: usize = 32;

/// Whether the backlog stops the socket's reading: [`MAX_BACKLOG`] commands, or commands
/// of `max_bytes` in all. By count alone, 32 commands of the largest frame would hold
/// 2 MiB per connection at the defaults, twice what the outbound queue may; by bytes
/// too, a backlog holds less than two frames' worth (the last command read may pass it).
fn backlog_full(backlog: &VecDeque<tungstenite::Utf8Bytes>, max_bytes: usize) -> bool {
    backlog.len() >= MAX_BACKLOG || backlog.iter().map(|c| c.len()).sum::<usize>() >= max_bytes
}

/// Runs `work` (queueing a command's output: possibly a long replay at the client's pace)
/// while still reading the socket, so the client's pongs keep the heartbeat alive;
/// commands read meanwhile wait in `backlog`. False when the connection must stop.
///
/// With the backlog full the socket is not read, so the client's pongs wait unread
/// behind its commands: the heartbeat is kept alive by this loop instead, each interval,
/// since it is the gateway that stopped reading a client that was sending. A client that
/// dies meanwhile is caught by the write timeout (a replay writes), or by the heartbeat
/// once reading resumes.
async fn pump<S>(
    work: impl std::future::Future<Output = bool>,
    reader: &mut Reader<S>,
    backlog: &mut VecDeque<tungstenite::Utf8Bytes>,
) -> bool
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    tokio::pin!(work);
    let interval = reader.node.config.heartbeat.interval;
    let max_bytes = reader.node.config.limits.max_frame_bytes;
    loop {
        let full = backlog_full(backlog, max_bytes);
        tokio::select! {
            biased;
            done = &mut work => return done,
            msg = reader.stream.next(), if !full => match reader.take(msg) {
                Read::Command(text) => backlog.push_back(text),
                Read::Skip => {}
                Read::Stop => return false,
            },
            _ = tokio::time::sleep(interval), if full => {
                reader.queue.heard(reader.node.clock_ms());
            }
        }
    }
}

/// Queues a command's steps (see [`Session::deliver`]) while reading the socket. Boxed
/// where it is awaited, as every occasional step of the socket loop: what a step holds
/// while it waits would otherwise be part of every idle connection's task.
async fn deliver_reading<S>(
    session: &Session,
    steps: Vec<Step>,
    reader: &mut Reader<S>,
    backlog: &mut VecDeque<tungstenite::Utf8Bytes>,
) -> bool
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    pump(session.deliver(steps), reader, backlog).await
}

/// Serves one upgraded socket until it closes. The set-up happens here, before the
/// returned future runs: an async fn keeps its arguments (the socket before its split,
/// the connect hook's answer) in its state for the connection's whole life, and that
/// state is most of what an idle connection costs.
///
/// `wire`, when the socket is one, lets live messages go straight to it (see
/// [`outbound`]'s fast path).
pub fn serve<S>(
    node: Arc<Node>,
    ws: S,
    wire: Option<Arc<outbound::Wire>>,
    identity: Identity,
    mut slots: Slots,
    extras: ConnectAnswer,
) -> impl std::future::Future<Output = ()> + Send
where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + futures_util::Sink<Message, Error = tungstenite::Error>
        + Unpin
        + Send
        + 'static,
{
    let limits = &node.config.limits;
    let (queue, rx) = outbound::queue(limits.outbound_queue_frames, limits.outbound_queue_bytes);
    let resume_token = session::Hex::random();
    let ctl = Arc::new(ConnCtl::new(resume_token));
    let id = node.register(queue.clone(), &identity.user, Some(ctl.clone()));
    slots.registered = Some(id);
    node.metrics.accepted.inc();
    queue.heard(node.clock_ms());
    let (sink, stream) = ws.split();
    let session = Session::new(node.clone(), id, identity, queue.clone(), resume_token);
    let settings = writer_settings(&node);
    if let Some(wire) = wire {
        queue.attach(wire);
    }
    let writer = tokio::spawn(outbound::run_writer(sink, rx, settings));
    let reader = Reader {
        stream,
        node,
        id,
        queue,
    };
    run(
        session,
        reader,
        writer,
        ctl,
        Box::new(slots),
        Box::new(extras),
    )
}

/// The socket loop of [`serve`]: `slots` are released when it ends; `extras` is the
/// connect hook's answer (boxed, as the slots: what the loop captures stays in its state).
/// An async block rather than an async fn, which would keep a second copy of its
/// arguments (the session among them) in the state of every connection's task.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn run<S>(
    mut session: Session,
    mut reader: Reader<S>,
    writer: tokio::task::JoinHandle<outbound::WriterOutcome>,
    ctl: Arc<ConnCtl>,
    slots: Box<Slots>,
    extras: Box<ConnectAnswer>,
) -> impl std::future::Future<Output = ()>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send + 'static,
{
    async move {
        let node = reader.node.clone();
        let queue = reader.queue.clone();
        let id = reader.id;
        let limits = &node.config.limits;
        let joined = {
            let extras = extras; // freed after the welcome, not when the connection ends
            Box::pin(session.welcome(*extras)).await
        };
        session.notify_connected();

        let mut backlog = VecDeque::new();
        let steps = joined.into_iter().map(Step::Replay).collect();
        if !Box::pin(deliver_reading(&session, steps, &mut reader, &mut backlog)).await {
            queue.stop(); // a connect-hook room's replay ended the connection
        }
        let mut bucket = TokenBucket::new(limits.message_rate, limits.message_burst);
        let mut errors_in_row = 0u32;
        // Boxed and dropped once the inbox is replayed: most connections are long past it.
        let mut grace = Some(Box::pin(tokio::time::sleep(RESUME_GRACE)));
        // Boxed: a timer is 112 bytes, which took the task of every connection into the
        // allocator's next size class (1,280 bytes, against 1,024).
        let mut expiry = Box::pin(tokio::time::sleep_until(instant_of(
            session.next_deadline(),
        )));
        loop {
            if queue.is_closing() {
                break; // commands left in the backlog have nobody to answer
            }
            if !backlog.is_empty() {
                // Commands read while a delivery waited run back to back and never reach
                // the select below: the token's deadline and the node's messages are
                // looked at here too, or a client that keeps the backlog fed (one command
                // per reply it reads) would put off its token's expiry, a key's
                // revocation and the server's unsubscribes for good.
                let due = expiry.deadline() <= tokio::time::Instant::now();
                if due && !Box::pin(session.deadline_passed()).await {
                    break;
                }
                let told = ctl.has_news();
                if told && !Box::pin(session.control_news(&ctl)).await {
                    break;
                }
                if due || told {
                    expiry.as_mut().reset(instant_of(session.next_deadline()));
                }
            }
            let text = match backlog.pop_front() {
                Some(text) => text,
                None => {
                    let msg = tokio::select! {
                        _ = queue.closed() => break,
                        _ = OptionFuture::from(grace.as_mut()), if session.inbox_pending && grace.is_some() => {
                            grace = None;
                            let replayed = Box::pin(async {
                                let replay = session.replay_inbox_from_cursor().await;
                                let steps = replay.into_iter().map(Step::Replay).collect();
                                deliver_reading(&session, steps, &mut reader, &mut backlog).await
                            });
                            if !replayed.await {
                                break;
                            }
                            continue;
                        }
                        _ = &mut expiry => {
                            if !Box::pin(session.deadline_passed()).await {
                                break;
                            }
                            expiry.as_mut().reset(instant_of(session.next_deadline()));
                            continue;
                        }
                        _ = ctl.wait() => {
                            if !Box::pin(session.control_news(&ctl)).await {
                                break;
                            }
                            // Leaving a room puts a session save on the timer.
                            expiry.as_mut().reset(instant_of(session.next_deadline()));
                            continue;
                        }
                        msg = reader.stream.next() => msg,
                    };
                    match reader.take(msg) {
                        Read::Command(text) => text,
                        Read::Skip => continue,
                        Read::Stop => break,
                    }
                }
            };
            node.metrics.commands.inc();
            // The connection's own rate first: a flooding connection does not spend the
            // tokens its user's other connections share.
            let over = if !bucket.take() {
                Some(("rate_limited", "over the command rate limit; slow down"))
            } else if !node.take_user_command(&session.identity.user) {
                let text = "over the user's command rate limit (all their connections); slow down";
                Some(("user_rate_limited", text))
            } else {
                None
            };
            let (client_fault, steps) = if let Some((reason, message)) = over {
                node.metrics.drops.with_label_values(&[reason]).inc();
                let refused = error_frame(
                    protocol::command::salvage_id(&text).as_ref(),
                    ErrorCode::RateLimited,
                    message,
                );
                (true, vec![Step::Frame(refused)])
            } else {
                // Boxed, as every occasional step of this loop: the future of a command is
                // ~2 KiB, which the task of every idle connection would otherwise carry.
                Box::pin(run_command(&mut session, &text)).await
            };
            if !Box::pin(deliver_reading(&session, steps, &mut reader, &mut backlog)).await {
                break;
            }
            if !session.inbox_pending {
                grace = None;
            }
            errors_in_row = if client_fault { errors_in_row + 1 } else { 0 };
            // A refresh (or a room token) may have moved the next expiry.
            expiry.as_mut().reset(instant_of(session.next_deadline()));
            if errors_in_row > limits.max_errors_in_row {
                queue.close(disconnect::TOO_MANY_ERRORS);
                break;
            }
        }

        if queue.close_reason().is_none() {
            queue.stop(); // the client left; nothing more to write
        }
        let outcome = writer.await.unwrap_or_else(|e| {
            tracing::error!(conn = id, error = %e, "writer task failed");
            Default::default()
        });
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
        session.notify_disconnected(reason);
        Box::pin(session.close(&outcome.positions)).await;
        // Held until here: the connection is unregistered and no longer counts against
        // its IP and user.
        drop(slots);
        if queue.close_reason().is_some() {
            // Last: the connection is gone from every count, only its socket is left. In
            // a task of its own: one more wait here would grow the state every
            // connection's task carries for its whole life (tests_footprint).
            let raw = outcome.wire.map(outbound::WireIo);
            tokio::spawn(crate::closing::finish(reader.stream, raw));
        }
    }
}

/// What a command puts on the queue, in order.
#[derive(Debug)]
pub(crate) enum Step {
    /// A reply (`ok` or `error`).
    Frame(String),
    /// A room's replay, streamed at the client's pace.
    Replay(Replay),
}

/// Parses and runs one command. Returns whether the client was at fault (for the error
/// streak) and what to queue: the reply, then the replays it started.
async fn run_command(session: &mut Session, text: &str) -> (bool, Vec<Step>) {
    let cmd = match Command::parse(text) {
        Ok(cmd) => cmd,
        Err(err) => {
            let refused = error_frame(err.id.as_ref(), err.code, &err.message);
            return (true, vec![Step::Frame(refused)]);
        }
    };
    let mut steps = Vec::new();
    // The inbox replay waits for a `resume`; any other command means none is coming, so
    // the inbox is replayed from the user's cursor first.
    if session.inbox_pending && !matches!(cmd, Command::Resume(_)) {
        if let Some(replay) = Box::pin(session.replay_inbox_from_cursor()).await {
            steps.push(Step::Replay(replay));
        }
    }
    let id = cmd.id().clone();
    let client_fault = match session.handle(cmd).await {
        Ok(outcome) => {
            steps.push(Step::Frame(ok_frame(&id, &outcome.reply)));
            steps.extend(outcome.then.into_iter().map(Step::Replay));
            false
        }
        Err(refusal) => {
            steps.push(Step::Frame(error_frame(
                Some(&id),
                refusal.code,
                &refusal.message,
            )));
            // Only the client's own faults count towards the abuse limit: an engine
            // outage must not get well-behaved clients disconnected.
            !refusal.code.is_server_fault()
        }
    };
    (client_fault, steps)
}

impl Session {
    /// Queues a command's steps in order: frames once the queue has room, replays at the
    /// client's pace. False when the connection is closing.
    pub(crate) async fn deliver(&self, steps: Vec<Step>) -> bool {
        for step in steps {
            let queued = match step {
                Step::Frame(f) => self.queue.push_paced(Outbound::Frame(f.into())).await,
                Step::Replay(r) => self.stream(r).await,
            };
            if !queued {
                return false;
            }
        }
        true
    }
}

/// What the writer needs: the heartbeat (for the write timeout) and the callback that
/// counts deliveries.
fn writer_settings(node: &Arc<Node>) -> WriterSettings {
    WriterSettings {
        heartbeat: node.config.heartbeat.interval,
        on_delivered: node.on_delivered.clone(),
    }
}

/// Counts each delivery a writer makes, and its end-to-end latency when the message has
/// a time (a fan-out counts what it writes itself: [`crate::hub::Hub::counting`]).
pub(crate) fn count_deliveries(metrics: &crate::metrics::Metrics) -> outbound::OnDelivered {
    let deliveries = metrics.deliveries();
    Arc::new(move |env, live| deliveries.one(env, live))
}
