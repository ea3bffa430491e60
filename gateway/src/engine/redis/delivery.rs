//! What both subscribers (one server or Sentinel's master: [`subscriber`](super::subscriber);
//! a Redis Cluster: [`sharded`](super::sharded)) do with what arrives: the rooms this node
//! delivers and how far it got in each, handing payloads to the hub, and filling the gap
//! from history after a subscription was lost and made again.
//!
//! A gap fill can fail: right after a failover the command connection may still point at
//! the node that died while pub/sub already reaches the promoted one. A room whose fill
//! failed is held: its live messages are not handed on (each one is in history already,
//! stored before it was published) and the fill is tried again until it succeeds, which
//! delivers them in order. Handing them on instead would skip the gap for good.
//!
//! A fill can also find that history no longer holds the whole gap (an outage longer than
//! the room's retention). Its local members are then closed with 1013 `replay
//! interrupted` before anything past the gap reaches them: they resume from the last
//! message they got and learn `recovered: false`, instead of reading on past a hole.

use super::fast_path::FastPath;
use super::payload::{frame_ts, parse_payload, parse_routed, Payload};
use super::shared::Shared;
use crate::engine::{EngineError, Envelope, HistoryPage, HistoryQuery, EMPTY_EPOCH};
use crate::protocol::push::PresencePush;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A gap fill reads history in pages of at most this many messages and bytes.
const FILL_MESSAGES: usize = 500;
const FILL_BYTES: usize = 512 * 1024;
/// A failed gap fill is tried again after this long, doubling up to [`FILL_RETRY_MAX`].
const FILL_RETRY: Duration = Duration::from_millis(100);
const FILL_RETRY_MAX: Duration = Duration::from_secs(2);

/// The room's epoch and top now (a failed read: nothing seen, a later gap fill reads the
/// room from its start). An inbox's is read as its head, handed to the connections that
/// asked for it ([`Top`]); a room's with a plain `HMGET`.
async fn current_top(shared: &Shared, room: &str) -> Top {
    if crate::protocol::is_inbox(room) {
        return Top::of_inbox(shared.history(room, HistoryQuery::default()).await);
    }
    let mut conn = shared.conn();
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(shared.keys.meta(room)).arg("epoch").arg("seq");
    let seen = match shared
        .run(cmd.query_async::<(Option<String>, Option<u64>)>(&mut conn))
        .await
    {
        Ok((epoch, seq)) => Seen {
            epoch: epoch.map(Into::into),
            seq: seq.unwrap_or(0),
            ..Seen::default()
        },
        Err(_) => Seen::default(),
    };
    Top { seen, head: None }
}

/// Where this node starts delivering a room, and the room's head when that is a valid
/// catch-up head for the connections waiting on the subscription.
///
/// Only an inbox's is: its channel (the node's, or its bucket's in a cluster) is
/// subscribed before any inbox is added, the waiting connections registered in the hub
/// before asking, and nothing is dispatched while the subscriber awaits the read. So a
/// message after the head reaches them live, or (pub/sub down) from the gap fill that
/// starts at the head. A room's top may be read before its SUBSCRIBE is confirmed, when
/// a message can still slip past both: good enough for a gap fill's start, not for a
/// catch-up.
#[derive(Default)]
pub(super) struct Top {
    pub(super) seen: Seen,
    pub(super) head: Option<HistoryPage>,
}

impl Top {
    /// An inbox's, from its head.
    fn of_inbox(head: Result<HistoryPage, EngineError>) -> Top {
        match head {
            Ok(page) => Top {
                seen: Seen {
                    epoch: (*page.epoch != *EMPTY_EPOCH).then(|| page.epoch.clone()),
                    seq: page.top,
                    ..Seen::default()
                },
                head: Some(page),
            },
            Err(_) => Top::default(),
        }
    }
}

/// What this node last saw of a room it delivers. One per local room and per local
/// user's inbox, so kept small: a room owed a gap fill keeps its retry in [`Owed`].
#[derive(Clone, Default)]
pub(super) struct Seen {
    epoch: Option<Arc<str>>,
    /// Where a gap fill starts.
    seq: u64,
    /// Highest seq of the epoch this node delivered (0: none yet).
    delivered: u64,
    /// Highest append time of those (Redis' clock).
    ts: u64,
}

/// A gap fill owed (the last one failed): when to try again, and the wait after that.
type Owed = (Instant, Duration);

/// The rooms (and inboxes) this node delivers.
pub(super) struct Delivery {
    shared: Arc<Shared>,
    /// Rooms whose subscription is in place (the fast path for later joiners).
    active: Arc<FastPath>,
    rooms: HashMap<Box<str>, Seen>,
    /// Rooms whose last gap fill failed: they are held (see the module docs).
    owed: HashMap<Box<str>, Owed>,
    repair: mpsc::UnboundedSender<Arc<Envelope>>,
}

impl Delivery {
    pub(super) fn new(
        shared: Arc<Shared>,
        active: Arc<FastPath>,
        repair: mpsc::UnboundedSender<Arc<Envelope>>,
    ) -> Delivery {
        Delivery {
            shared,
            active,
            rooms: HashMap::new(),
            owed: HashMap::new(),
            repair,
        }
    }

    pub(super) fn has(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Rooms with a channel of their own (every room but the inboxes).
    pub(super) fn room_channels(&self) -> Vec<String> {
        self.rooms
            .keys()
            .filter(|r| !crate::protocol::is_inbox(r))
            .map(|r| self.shared.keys.channel(r))
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Starts delivering a room whose subscription is in place, from its top now (where a
    /// gap fill after a reconnect starts); returns an inbox's head (see [`Top`]).
    pub(super) async fn add(&mut self, room: &str) -> Option<HistoryPage> {
        let top = current_top(&self.shared, room).await;
        self.start(room, top)
    }

    /// Starts delivering a room whose subscription is in place, from the top
    /// [`tops`](Self::tops) read for it; returns an inbox's head (see [`Top`]).
    pub(super) fn start(&mut self, room: &str, top: Top) -> Option<HistoryPage> {
        self.insert(room, top.seen);
        top.head
    }

    fn insert(&mut self, room: &str, seen: Seen) {
        if !crate::protocol::is_inbox(room) {
            self.active.open(room);
        }
        self.rooms.insert(room.into(), seen);
    }

    /// The tops of `rooms` now, read concurrently (one round trip for all of them on the
    /// multiplexed connection): the inboxes' heads in as few script calls as
    /// [`heads`](super::heads::heads) can, each room's its own command. A top read before
    /// the room's subscription is confirmed is safe: a gap fill from it only hands on a few
    /// messages more, which connections drop by seq.
    pub(super) fn tops(
        &self,
        rooms: Vec<String>,
    ) -> impl std::future::Future<Output = Vec<(String, Top)>> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let (inboxes, others): (Vec<&str>, Vec<&str>) = rooms
                .iter()
                .map(String::as_str)
                .partition(|r| crate::protocol::is_inbox(r));
            let heads = super::heads::heads(&shared, &inboxes);
            let reads =
                futures_util::future::join_all(others.iter().map(|r| current_top(&shared, r)));
            let (heads, seen) = futures_util::future::join(heads, reads).await;
            // Back in the order asked: the callers pair each top with its waiting callers.
            let (mut heads, mut seen) = (heads.into_iter().map(Top::of_inbox), seen.into_iter());
            let tops: Vec<Top> = rooms
                .iter()
                .filter_map(|room| {
                    if crate::protocol::is_inbox(room) {
                        heads.next()
                    } else {
                        seen.next()
                    }
                })
                .collect();
            rooms.into_iter().zip(tops).collect()
        }
    }

    /// Stops delivering a room unless a local member joined it since the last one left;
    /// true when it stopped (see [`FastPath::close_unless`] for the order of the checks).
    pub(super) fn remove_unused(&mut self, room: &str) -> bool {
        let hub = &self.shared.hub;
        if !self.active.close_unless(room, |r| hub.has_subscribers(r)) {
            return false;
        }
        self.rooms.remove(room);
        self.owed.remove(room);
        true
    }

    /// Fills the gap of every room (a lost connection to one server).
    pub(super) async fn fill_all(&mut self) {
        let names: Vec<String> = self.rooms.keys().map(|r| r.to_string()).collect();
        self.fill_each(names).await;
    }

    /// Fills the gap of what a channel carries: its room, or the local inboxes of an
    /// inbox channel (a subscription made again in a cluster).
    pub(super) async fn fill_channel(&mut self, channel: &str) {
        let keys = &self.shared.keys;
        let names: Vec<String> = if keys.is_inbox_channel(channel) {
            self.rooms
                .keys()
                .filter(|r| crate::protocol::is_inbox(r))
                .filter(|r| !keys.cluster || keys.route(r).channel == channel)
                .map(|r| r.to_string())
                .collect()
        } else {
            keys.room_of_channel(channel)
                .filter(|r| self.rooms.contains_key(*r))
                .map(|r| vec![r.to_string()])
                .unwrap_or_default()
        };
        self.fill_each(names).await;
    }

    /// Fills each room in turn until one fails; the rest are then held untried (their live
    /// messages wait in history) and left to [`fill_held`](Self::fill_held)'s rounds, for
    /// the reason those end at their first failure: each failure can take
    /// [`OP_TIMEOUT`](super::shared::OP_TIMEOUT) (a route to a node that died), and a
    /// reconnect's fill of 100 rooms then stalled this task, every join and every room's
    /// live messages for minutes.
    async fn fill_each(&mut self, rooms: Vec<String>) {
        let mut rooms = rooms.into_iter();
        for room in rooms.by_ref() {
            if !self.fill(&room).await {
                break;
            }
        }
        let retry = Instant::now() + FILL_RETRY;
        for room in rooms {
            self.owed
                .entry(room.into())
                .or_insert((retry, FILL_RETRY * 2));
        }
    }

    /// Tries the owed gap fills whose wait is over (see the module docs). A round ends at
    /// its first failure: the rest likely wait for the same node, and each failure can
    /// take [`OP_TIMEOUT`](super::shared::OP_TIMEOUT) while live messages of other rooms
    /// queue behind it.
    pub(super) async fn fill_held(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .owed
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(r, _)| r.to_string())
            .collect();
        for room in due {
            if !self.fill(&room).await {
                break;
            }
        }
    }

    /// Delivers what was published to a room since this node last saw it, page by page.
    /// On a failure (false) the room is held (what was delivered so far counts) until a
    /// later fill succeeds.
    async fn fill(&mut self, room: &str) -> bool {
        let Some(mut seen) = self.rooms.get(room).cloned() else {
            return true;
        };
        let mut restarted = false;
        let mut failed = false;
        loop {
            let q = HistoryQuery {
                since: Some(seen.seq),
                before: None,
                limit: FILL_MESSAGES,
                max_bytes: FILL_BYTES,
            };
            let page = match self.shared.history(room, q).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(%room, error = %e, "gap fill failed; the room's messages wait for the next try");
                    self.shared.errors.inc();
                    failed = true;
                    break;
                }
            };
            if seen.epoch.as_ref().is_some_and(|e| *e != page.epoch) && !restarted {
                // History was lost or a new epoch started: all of the new one is new.
                restarted = true;
                seen = Seen {
                    epoch: Some(page.epoch.clone()),
                    ..Seen::default()
                };
                continue;
            }
            // Where the node was is known only with its epoch: a room whose top could not
            // be read at subscribe is filled from its start, and a trimmed start is no gap.
            let known = seen.epoch.is_some();
            seen.epoch = Some(page.epoch.clone());
            let next = page.messages.first().map_or(page.top, |m| m.seq);
            let trimmed = next > seen.seq.saturating_add(1)
                || (page.messages.is_empty() && page.top > seen.seq);
            if known && trimmed {
                let closed = self
                    .shared
                    .hub
                    .close_members(room, crate::disconnect::REPLAY_INTERRUPTED);
                tracing::warn!(%room, after = seen.seq, resumes_at = next, members = closed,
                    "gap fill: history no longer holds every missed message; members closed to resume");
            }
            for env in &page.messages {
                self.shared.hub.deliver(env);
                seen.seq = env.seq;
                seen.delivered = seen.delivered.max(env.seq);
                seen.ts = seen.ts.max(frame_ts(&env.frame).unwrap_or(0));
            }
            if page.messages.is_empty() {
                seen.seq = seen.seq.max(page.top); // trimmed meanwhile (members closed above)
            }
            if !page.more || page.messages.is_empty() {
                break;
            }
        }
        // The room may have been left while the fill ran.
        if let Some(slot) = self.rooms.get_mut(room) {
            *slot = seen;
            if failed {
                let next = match self.owed.get(room) {
                    None => (Instant::now() + FILL_RETRY, FILL_RETRY * 2),
                    Some((_, wait)) => (Instant::now() + *wait, (*wait * 2).min(FILL_RETRY_MAX)),
                };
                self.owed.insert(room.into(), next);
            } else {
                self.owed.remove(room);
            }
        }
        !failed
    }

    /// Hands one pub/sub message to the hub.
    pub(super) async fn dispatch(&mut self, channel: &str, payload: &[u8]) {
        let keys = &self.shared.keys;
        let (room, payload) = if keys.is_inbox_channel(channel) {
            // Every inbox message reaches every node: only those holding the user go on.
            match parse_routed(payload) {
                Some((room, rest)) if self.rooms.contains_key(room) => {
                    if keys.cluster && keys.route(room).channel != channel {
                        return; // not this inbox's bucket: forged or stale
                    }
                    (room, rest)
                }
                _ => return,
            }
        } else {
            match keys.room_of_channel(channel) {
                Some(room) => (room, payload),
                None => return,
            }
        };
        match parse_payload(payload) {
            Some(Payload::Presence(frame)) => {
                // One change per payload; the hub batches them for this node's members.
                // (A frame of another room or shape is forged or stale: skipped.)
                if let Some(p) = PresencePush::parse(frame).filter(|p| p.room == room) {
                    for user in &p.joined {
                        self.shared.hub.presence(room, user, true);
                    }
                    for user in &p.left {
                        self.shared.hub.presence(room, user, false);
                    }
                }
            }
            Some(Payload::Msg {
                seq,
                epoch,
                ts,
                traceparent,
                frame,
            }) => {
                // A new epoch met mid-way: the store started numbering again (a failover
                // to a replica that was behind) while this node was not listening, so what
                // came before this message in the new epoch never reached it. Or a gap
                // fill is owed. Fill from history first; the fill delivers this message
                // too, in order.
                let jumped = self.rooms.get(room).is_some_and(|s| {
                    let other = s.epoch.as_deref().is_some_and(|e| e != epoch);
                    other && seq > 1
                });
                let held = self.owed.get(room).copied();
                if held.is_some_and(|(at, _)| at > Instant::now()) {
                    return; // in history: the next try delivers it
                }
                if jumped || held.is_some() {
                    self.fill(room).await;
                    let Some(s) = self.rooms.get(room) else {
                        return;
                    };
                    if self.owed.contains_key(room) {
                        return; // failed again: still in history for the next try
                    }
                    if s.epoch.as_deref() == Some(epoch) && s.seq >= seq {
                        self.shared.seen.observe(room, epoch, seq);
                        return;
                    }
                }
                let env = Arc::new(Envelope::new(
                    self.shared.hub.name_of(room),
                    seq,
                    epoch.into(),
                    ts,
                    traceparent.map(Arc::from),
                    frame,
                ));
                if let Some(seen) = self.rooms.get_mut(room) {
                    let same = seen.epoch.as_deref() == Some(epoch);
                    if same && seen.delivered > 0 && seq <= seen.delivered && ts > seen.ts {
                        // A seq this node delivered already, appended after everything it
                        // delivered: the store numbers the epoch again from an older point.
                        // (A message delivered twice after a reconnect is older, not newer.)
                        let _ = self.repair.send(env.clone());
                    }
                    if same {
                        seen.seq = seen.seq.max(seq);
                        seen.delivered = seen.delivered.max(seq);
                        seen.ts = seen.ts.max(ts);
                    } else {
                        *seen = Seen {
                            epoch: Some(env.epoch.clone()),
                            seq,
                            delivered: seq,
                            ts,
                        };
                    }
                }
                self.shared.seen.observe(room, epoch, seq);
                self.shared.hub.deliver(&env);
            }
            Some(Payload::Ephemeral {
                ts,
                traceparent,
                frame,
            }) => {
                // No seq: no position to track, nothing to fill after a gap.
                self.shared.hub.deliver(&Arc::new(Envelope::new(
                    self.shared.hub.name_of(room),
                    0,
                    "".into(),
                    ts,
                    traceparent.map(Arc::from),
                    frame,
                )));
            }
            None => {}
        }
    }
}
