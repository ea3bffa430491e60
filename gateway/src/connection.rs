//! Connection: one client socket. This task reads and answers commands; a second task
//! (see [`outbound`](crate::outbound)) writes everything the client receives.

use crate::engine::{EngineError, HistoryPage, HistoryQuery, Publish, RoomPosition, SessionRecord};
use crate::hub::ConnId;
use crate::node::{IpSlot, Node};
use crate::outbound::{self, CloseReason, Outbound, OutboundQueue, WriterSettings};
use crate::protocol::{
    self, close, error_frame, ok_frame, Command, CommandId, ErrorCode, Position, Welcome,
};
use crate::ratelimit::TokenBucket;
use crate::telemetry;
use futures_util::{Stream, StreamExt};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::Instrument;

/// How long after `welcome` a client may send `resume` before its inbox is replayed from
/// the user's inbox cursor (any other first command replays it at once).
pub const RESUME_GRACE: Duration = Duration::from_secs(1);

/// Default and maximum `limit` of `history`.
const DEFAULT_HISTORY_LIMIT: usize = 50;

/// A command failed: the code and message of the `error` reply.
struct Refusal(ErrorCode, String);

impl Refusal {
    fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Refusal(code, msg.into())
    }
}

impl From<EngineError> for Refusal {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(m) => Refusal(ErrorCode::Unavailable, m),
            EngineError::Internal(m) => Refusal(ErrorCode::Internal, m),
        }
    }
}

/// `Ok(Some(frame))`: queue this reply; `Ok(None)`: the handler queued it already.
type Reply = Result<Option<String>, Refusal>;

/// Catch-up result of one room, reported in `join` and `resume` replies.
#[derive(serde::Serialize)]
struct RoomStatus {
    recovered: bool,
    epoch: Arc<str>,
    seq: u64,
}

/// Per-connection state used by the command handlers.
struct Conn {
    node: Arc<Node>,
    id: ConnId,
    conn_key: String,
    session: String,
    resume_token: String,
    user: String,
    inbox: Arc<str>,
    queue: OutboundQueue,
    /// Joined rooms (not the inbox) and the (epoch, top seq) seen at join.
    rooms: HashMap<Arc<str>, (Arc<str>, u64)>,
    inbox_pending: bool,
    connected_at: u64,
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
    let inbox: Arc<str> = protocol::inbox_of(&user).into();
    let on_inbox = {
        let engine = node.engine.clone();
        let user = user.clone();
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
    let writer = tokio::spawn(outbound::run_writer(
        sink,
        rx,
        WriterSettings {
            heartbeat: node.config.heartbeat.interval,
            last_seen: last_seen.clone(),
            epoch: started,
            on_inbox: Some(on_inbox),
            inbox: inbox.clone(),
            on_delivered: Box::new(move |env| {
                delivered.inc();
                if env.ts > 0 {
                    let ms = crate::engine::now_ms().saturating_sub(env.ts);
                    delivery_seconds.observe(ms as f64 / 1000.0);
                }
            }),
        },
    ));

    let mut conn = Conn {
        node: node.clone(),
        id,
        conn_key: format!("{}/{}", node.id, id),
        session: random_hex(8),
        resume_token: random_hex(16),
        user,
        inbox,
        queue: queue.clone(),
        rooms: HashMap::new(),
        inbox_pending: true,
        connected_at: crate::engine::now_ms(),
    };
    Box::pin(conn.welcome()).await;
    if let Err(e) = node
        .engine
        .register_connection(&conn.user, &conn.conn_key, &node.id)
        .await
    {
        tracing::debug!(error = %e, "connection not registered");
    }

    let max_errors = limits.max_errors_in_row;
    let mut bucket = TokenBucket::new(limits.message_rate, limits.message_burst);
    let mut errors_in_row = 0u32;
    let grace = tokio::time::sleep(RESUME_GRACE);
    tokio::pin!(grace);
    let closing = queue.closing().clone();
    loop {
        let msg = tokio::select! {
            _ = closing.cancelled() => break,
            _ = &mut grace, if conn.inbox_pending => {
                Box::pin(conn.replay_inbox_from_cursor()).await;
                continue;
            }
            msg = stream.next() => msg,
        };
        last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let text = match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                conn.refuse_connection(&CloseReason {
                    code: close::UNSUPPORTED_DATA,
                    reason: "binary frames are not supported",
                });
                break;
            }
            Some(Err(tungstenite::Error::Capacity(_))) => {
                node.metrics.drops.with_label_values(&["oversize"]).inc();
                conn.refuse_connection(&CloseReason {
                    code: close::TOO_BIG,
                    reason: "message too big",
                });
                break;
            }
            Some(Err(tungstenite::Error::Utf8(_))) => {
                conn.refuse_connection(&CloseReason {
                    code: close::INVALID_PAYLOAD,
                    reason: "invalid utf-8",
                });
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(conn = id, error = %e, "read failed");
                break;
            }
        };
        node.metrics.commands.inc();
        let ok = if bucket.take() {
            conn.handle_text(&text).await
        } else {
            node.metrics
                .drops
                .with_label_values(&["rate_limited"])
                .inc();
            let reference = protocol::salvage_id(&text);
            queue.frame(error_frame(
                reference.as_ref(),
                ErrorCode::RateLimited,
                "over the command rate limit; slow down",
            ));
            false
        };
        errors_in_row = if ok { 0 } else { errors_in_row + 1 };
        if errors_in_row > max_errors {
            conn.refuse_connection(&CloseReason {
                code: close::POLICY,
                reason: "too many errors",
            });
            break;
        }
    }

    if queue.close_reason().is_none() {
        queue.closing().cancel(); // the client left; nothing more to write
    }
    let outcome = match writer.await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!(conn = id, error = %e, "writer task failed");
            Default::default()
        }
    };
    let reason = queue.close_reason().map_or("client closed", |r| r.reason);
    if reason == outbound::SLOW_CONSUMER.reason {
        node.metrics
            .drops
            .with_label_values(&["slow_consumer"])
            .inc();
    }
    node.metrics.closed.with_label_values(&[reason]).inc();
    Box::pin(conn.detach_all(&outcome.positions)).await;
    if let Err(e) = node
        .engine
        .unregister_connection(&conn.user, &conn.conn_key)
        .await
    {
        tracing::debug!(error = %e, "connection not unregistered");
    }
    node.unregister(id);
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl Conn {
    async fn welcome(&mut self) {
        let welcome = Welcome {
            kind: "welcome".into(),
            protocol: protocol::PROTOCOL_VERSION,
            session: self.session.clone(),
            user: self.user.clone(),
            resume_token: self.resume_token.clone(),
            heartbeat_ms: self.node.config.heartbeat.interval.as_millis() as u64,
            node: self.node.id.clone(),
        };
        self.queue.frame(protocol::to_json(&welcome));
        // Hold inbox messages back until we know where the client's inbox stands.
        self.queue.push(Outbound::BeginCatchup(self.inbox.clone()));
        let inbox = self.inbox.clone();
        if let Err(e) = self.subscribe(&inbox).await {
            tracing::warn!(user = %self.user, error = %e, "inbox subscribe failed");
            self.queue.frame(error_frame(
                None,
                ErrorCode::Unavailable,
                "inbox unavailable; resume later to receive direct messages",
            ));
        }
    }

    fn refuse_connection(&self, reason: &CloseReason) {
        self.queue.close(*reason);
    }

    /// Handles one text frame; returns false when the client was at fault (error streak).
    async fn handle_text(&mut self, text: &str) -> bool {
        let cmd = match Command::parse(text) {
            Ok(cmd) => cmd,
            Err(err) => {
                self.queue
                    .frame(error_frame(err.id.as_ref(), err.code, &err.message));
                return false;
            }
        };
        let is_resume = matches!(cmd, Command::Resume { .. });
        if self.inbox_pending && !is_resume {
            Box::pin(self.replay_inbox_from_cursor()).await;
        }
        let id = cmd.id().clone();
        let reply = match cmd {
            Command::Join {
                room, since, epoch, ..
            // Rare, large futures are boxed so every idle connection's task stays small;
            // `send`, the hot path, is not.
            } => Box::pin(self.join(&id, room, since, epoch)).await,
            Command::Leave { room, .. } => Box::pin(self.leave(&id, room)).await,
            Command::Send {
                room,
                msg_id,
                body,
                traceparent,
                ..
            } => self.send(&id, room, msg_id, body, traceparent).await,
            Command::History {
                room,
                since,
                before,
                limit,
                ..
            } => Box::pin(self.history(&id, room, since, before, limit)).await,
            Command::Presence { room, .. } => Box::pin(self.presence(&id, room)).await,
            Command::Ping { .. } => Ok(Some(ok_frame(
                &id,
                serde_json::json!({"pong": true, "ts": crate::engine::now_ms()}),
            ))),
            Command::Resume {
                resume_token,
                positions,
                ..
            } => Box::pin(self.resume(&id, resume_token, positions)).await,
        };
        match reply {
            Ok(frame) => {
                if let Some(frame) = frame {
                    self.queue.frame(frame);
                }
                true
            }
            Err(Refusal(code, message)) => {
                self.queue.frame(error_frame(Some(&id), code, &message));
                // Only the client's own faults count towards the abuse limit: an engine
                // outage must not get well-behaved clients disconnected.
                matches!(code, ErrorCode::Unavailable | ErrorCode::Internal)
            }
        }
    }

    fn check_room(&self, room: &str) -> Result<(), Refusal> {
        protocol::validate_room(room, self.node.config.limits.max_room_name)
            .map_err(|m| Refusal::new(ErrorCode::InvalidRoom, m))
    }

    /// Subscribes this connection to a room locally and, for the first local subscriber,
    /// in the engine. Undone on failure.
    async fn subscribe(&self, room: &Arc<str>) -> Result<(), EngineError> {
        if self.node.hub.subscribe(room, self.id, self.queue.clone()) {
            self.node
                .metrics
                .rooms
                .set(self.node.hub.room_count() as i64);
        }
        // Every joiner waits for the node's subscription to be live (not only the first):
        // reading history before that could miss a message.
        if let Err(e) = self.node.engine.subscribe(room).await {
            self.unsubscribe(room).await;
            return Err(e);
        }
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) {
        if self.node.hub.unsubscribe(room, self.id) {
            self.node
                .metrics
                .rooms
                .set(self.node.hub.room_count() as i64);
            if let Err(e) = self.node.engine.unsubscribe(room).await {
                tracing::warn!(room, error = %e, "engine unsubscribe failed");
            }
        }
    }

    /// Starts holding a room's live messages, subscribes and marks presence.
    async fn attach(&mut self, room: &Arc<str>) -> Result<(), Refusal> {
        self.queue.push(Outbound::BeginCatchup(room.clone()));
        let result = async {
            self.subscribe(room).await?;
            if let Err(e) = self
                .node
                .engine
                .presence_join(room, &self.user, &self.conn_key)
                .await
            {
                self.unsubscribe(room).await;
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.queue.push(Outbound::Forget(room.clone()));
            return Err(e.into());
        }
        Ok(())
    }

    /// Reads what a client at `since` missed; returns the status and the replay item.
    async fn catch_up(
        &self,
        room: &Arc<str>,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<(RoomStatus, Outbound), EngineError> {
        let query = match since {
            Some(s) => HistoryQuery {
                since: Some(s),
                before: None,
                limit: usize::MAX,
            },
            None => HistoryQuery {
                since: None,
                before: None,
                limit: 0,
            },
        };
        let page: HistoryPage = self.node.engine.history(room, query).await?;
        let recovered = since.is_some_and(|s| page.covers(s, epoch));
        let (from, msgs) = match since {
            Some(s) if recovered => (s, page.messages),
            _ => (page.top, Vec::new()),
        };
        let status = RoomStatus {
            recovered,
            epoch: page.epoch.clone(),
            seq: page.top,
        };
        Ok((
            status,
            Outbound::Replay {
                room: room.clone(),
                from,
                msgs,
            },
        ))
    }

    async fn replay_inbox_from_cursor(&mut self) {
        self.inbox_pending = false;
        let inbox = self.inbox.clone();
        let replay = async {
            let cursor = self.node.engine.inbox_cursor(&self.user).await?;
            self.catch_up(&inbox, Some(cursor), None).await
        }
        .await;
        match replay {
            Ok((_, item)) => {
                self.queue.push(item);
            }
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "inbox replay failed");
                self.queue.push(Outbound::Replay {
                    room: inbox,
                    from: 0,
                    msgs: Vec::new(),
                });
            }
        }
    }

    async fn join(
        &mut self,
        id: &CommandId,
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Reply {
        self.check_room(&room)?;
        if room.starts_with(protocol::INBOX_PREFIX) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "inboxes cannot be joined; your own inbox is always joined",
            ));
        }
        let room: Arc<str> = room.into();
        if self.rooms.contains_key(&room) {
            return Err(Refusal::new(ErrorCode::BadRequest, "already joined"));
        }
        if self.rooms.len() >= self.node.config.limits.rooms_per_connection {
            return Err(Refusal::new(
                ErrorCode::TooManyRooms,
                format!(
                    "at most {} rooms per connection",
                    self.node.config.limits.rooms_per_connection
                ),
            ));
        }
        self.attach(&room).await?;
        let (status, replay) = match self.catch_up(&room, since, epoch.as_deref()).await {
            Ok(r) => r,
            Err(e) => {
                self.detach(&room).await;
                return Err(e.into());
            }
        };
        self.rooms
            .insert(room.clone(), (status.epoch.clone(), status.seq));
        self.persist(&HashMap::new()).await;
        let mut fields =
            serde_json::json!({"room": &*room, "epoch": &*status.epoch, "seq": status.seq});
        if since.is_some() {
            fields["recovered"] = status.recovered.into();
        }
        let reply = ok_frame(id, fields);
        // The reply goes out before the replay so the client sees the room's state first.
        self.queue.frame(reply);
        self.queue.push(replay);
        Ok(None)
    }

    async fn detach(&mut self, room: &Arc<str>) {
        self.rooms.remove(room);
        self.queue.push(Outbound::Forget(room.clone()));
        self.unsubscribe(room).await;
        if let Err(e) = self
            .node
            .engine
            .presence_leave(room, &self.user, &self.conn_key)
            .await
        {
            tracing::warn!(room = %room, error = %e, "presence leave failed");
        }
    }

    async fn leave(&mut self, id: &CommandId, room: String) -> Reply {
        self.check_room(&room)?;
        let room: Arc<str> = room.into();
        if !self.rooms.contains_key(&room) {
            return Err(Refusal::new(
                ErrorCode::NotJoined,
                "not joined to this room",
            ));
        }
        self.detach(&room).await;
        self.persist(&HashMap::new()).await;
        Ok(Some(ok_frame(id, serde_json::json!({"room": &*room}))))
    }

    async fn send(
        &mut self,
        id: &CommandId,
        room: String,
        msg_id: Option<String>,
        body: Box<RawValue>,
        traceparent: Option<String>,
    ) -> Reply {
        self.check_room(&room)?;
        let is_inbox = room.starts_with(protocol::INBOX_PREFIX);
        if is_inbox && room.len() == protocol::INBOX_PREFIX.len() {
            return Err(Refusal::new(
                ErrorCode::InvalidRoom,
                "user:<id> needs a user id",
            ));
        }
        if !is_inbox && !self.rooms.contains_key(room.as_str()) {
            return Err(Refusal::new(
                ErrorCode::NotJoined,
                "join the room before sending",
            ));
        }
        let msg_id = match msg_id {
            Some(m) if m.is_empty() || m.len() > 128 => {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "msg_id must be 1..128 bytes",
                ))
            }
            Some(m) => m,
            None => random_hex(12),
        };
        let mut traceparent = traceparent.filter(|t| t.len() <= 128);
        let room: Arc<str> = room.into();
        let span = if telemetry::enabled() {
            let span = tracing::info_span!("send", room = %room, msg_id = %msg_id, user = %self.user, seq = tracing::field::Empty, trace_id = tracing::field::Empty);
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
        let published = self
            .node
            .engine
            .publish(Publish {
                room: room.clone(),
                from: self.user.clone(),
                msg_id: msg_id.clone(),
                body,
                traceparent,
            })
            .instrument(span.clone())
            .await?;
        span.record("seq", published.seq);
        self.node
            .metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
        if !published.duplicate {
            self.node.metrics.received.inc();
        }
        let mut fields = serde_json::json!({
            "room": &*room,
            "seq": published.seq,
            "epoch": &*published.epoch,
            "msg_id": msg_id,
        });
        if published.duplicate {
            fields["duplicate"] = true.into();
        }
        Ok(Some(ok_frame(id, fields)))
    }

    async fn history(
        &mut self,
        id: &CommandId,
        room: String,
        since: Option<u64>,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Reply {
        self.check_room(&room)?;
        if room.starts_with(protocol::INBOX_PREFIX) && *room != *self.inbox {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only your own inbox can be read",
            ));
        }
        let limit = limit
            .unwrap_or(DEFAULT_HISTORY_LIMIT)
            .min(protocol::MAX_HISTORY_LIMIT);
        let page = self
            .node
            .engine
            .history(
                &room,
                HistoryQuery {
                    since,
                    before,
                    limit,
                },
            )
            .await?;
        let messages: Vec<&RawValue> = page
            .messages
            .iter()
            .filter_map(|m| serde_json::from_str::<&RawValue>(&m.frame).ok())
            .collect();
        Ok(Some(ok_frame(
            id,
            serde_json::json!({
                "room": room,
                "epoch": &*page.epoch,
                "top": page.top,
                "first": page.first,
                "messages": messages,
            }),
        )))
    }

    async fn presence(&mut self, id: &CommandId, room: String) -> Reply {
        self.check_room(&room)?;
        if !self.rooms.contains_key(room.as_str()) {
            return Err(Refusal::new(
                ErrorCode::NotJoined,
                "join the room to see who is in it",
            ));
        }
        let users = self.node.engine.presence(&room).await?;
        Ok(Some(ok_frame(
            id,
            serde_json::json!({"room": room, "users": users}),
        )))
    }

    async fn resume(
        &mut self,
        id: &CommandId,
        token: String,
        positions: BTreeMap<String, Position>,
    ) -> Reply {
        let record = self.node.engine.take_session(&token).await?;
        if let Some(rec) = &record {
            if rec.user != self.user {
                // Not ours: put it back untouched.
                self.node.engine.save_session(&token, rec).await?;
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "resume token belongs to another user",
                ));
            }
        } else if positions.is_empty() {
            return Err(Refusal::new(
                ErrorCode::SessionNotFound,
                "resume token unknown or expired; join rooms again",
            ));
        }
        // Where to start each room: the client's positions win over the stored ones.
        let mut wanted: BTreeMap<String, (u64, Option<String>)> = BTreeMap::new();
        if let Some(rec) = &record {
            for (room, pos) in &rec.rooms {
                wanted.insert(room.clone(), (pos.seq, Some(pos.epoch.clone())));
            }
        }
        for (room, pos) in positions {
            let stored = wanted.get(&room).and_then(|(_, e)| e.clone());
            wanted.insert(
                room,
                (pos.seq(), pos.epoch().map(str::to_string).or(stored)),
            );
        }

        let mut statuses: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut replays = Vec::new();
        // Inbox first: it is already subscribed, only its replay is pending.
        if let Some((seq, epoch)) = wanted.remove(&*self.inbox) {
            let inbox = self.inbox.clone();
            if self.inbox_pending {
                self.inbox_pending = false;
                let (status, replay) = self.catch_up(&inbox, Some(seq), epoch.as_deref()).await?;
                statuses.insert(
                    inbox.to_string(),
                    serde_json::to_value(&status).unwrap_or_default(),
                );
                replays.push(replay);
            } else {
                // The inbox was already replayed from the cursor; earlier gaps cannot be
                // filled on this connection without reordering.
                statuses.insert(
                    inbox.to_string(),
                    serde_json::json!({"recovered": false, "reason": "resume came too late"}),
                );
            }
        } else if self.inbox_pending {
            self.replay_inbox_from_cursor().await;
        }
        for (room, (seq, epoch)) in wanted {
            let status = self.resume_room(&room, seq, epoch.as_deref()).await;
            match status {
                Ok((status, replay)) => {
                    statuses.insert(room, serde_json::to_value(&status).unwrap_or_default());
                    replays.push(replay);
                }
                Err(Refusal(code, message)) => {
                    statuses.insert(room, serde_json::json!({"recovered": false, "error": code.as_str(), "message": message}));
                }
            }
        }
        self.persist(&HashMap::new()).await;
        self.queue
            .frame(ok_frame(id, serde_json::json!({"rooms": statuses})));
        for r in replays {
            self.queue.push(r);
        }
        Ok(None)
    }

    async fn resume_room(
        &mut self,
        room: &str,
        seq: u64,
        epoch: Option<&str>,
    ) -> Result<(RoomStatus, Outbound), Refusal> {
        self.check_room(room)?;
        if room.starts_with(protocol::INBOX_PREFIX) {
            return Err(Refusal::new(ErrorCode::Forbidden, "not your inbox"));
        }
        let room: Arc<str> = room.into();
        if !self.rooms.contains_key(&room) {
            if self.rooms.len() >= self.node.config.limits.rooms_per_connection {
                return Err(Refusal::new(
                    ErrorCode::TooManyRooms,
                    "rooms per connection reached",
                ));
            }
            self.attach(&room).await?;
        } else {
            self.queue.push(Outbound::BeginCatchup(room.clone()));
        }
        match self.catch_up(&room, Some(seq), epoch).await {
            Ok((status, replay)) => {
                self.rooms.insert(room, (status.epoch.clone(), status.seq));
                Ok((status, replay))
            }
            Err(e) => {
                self.detach(&room).await;
                Err(e.into())
            }
        }
    }

    /// Saves the session for a later resume; `written` (the writer's positions at the
    /// end) overrides the positions known at join time.
    async fn persist(&self, written: &HashMap<Arc<str>, (Option<Arc<str>>, u64)>) {
        let position = |room: &Arc<str>, fallback: Option<&(Arc<str>, u64)>| {
            let (epoch, seq) = match (written.get(room), fallback) {
                (Some((Some(e), seq)), _) => (e.clone(), *seq),
                (_, Some((e, seq))) => (e.clone(), *seq),
                _ => return None,
            };
            Some((
                room.to_string(),
                RoomPosition {
                    seq,
                    epoch: epoch.to_string(),
                },
            ))
        };
        let rooms = self
            .rooms
            .iter()
            .filter_map(|(room, joined)| position(room, Some(joined)))
            .chain(position(&self.inbox, None))
            .collect();
        let record = SessionRecord {
            user: self.user.clone(),
            node: self.node.id.clone(),
            rooms,
            connected_at: self.connected_at,
            last_seen: crate::engine::now_ms(),
        };
        if let Err(e) = self
            .node
            .engine
            .save_session(&self.resume_token, &record)
            .await
        {
            tracing::warn!(user = %self.user, error = %e, "session not saved");
        }
    }

    /// Leaves everything after the socket closed and stores the session for a resume.
    async fn detach_all(&mut self, positions: &HashMap<Arc<str>, (Option<Arc<str>>, u64)>) {
        let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for room in &rooms {
            self.unsubscribe(room).await;
            if let Err(e) = self
                .node
                .engine
                .presence_leave(room, &self.user, &self.conn_key)
                .await
            {
                tracing::debug!(room = %room, error = %e, "presence leave failed");
            }
        }
        let inbox = self.inbox.clone();
        self.unsubscribe(&inbox).await;
        self.persist(positions).await;
    }
}
