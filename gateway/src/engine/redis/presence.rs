//! Presence on Redis: a room's presence keys share its hash tag, every change and its
//! announcement run in one script, and each node refreshes its own connections' entries
//! (entries nobody refreshes, a crashed node's, are swept).

use super::shared::{lock, parse_history, Shared};
use super::{scripts, RedisEngine};
use crate::engine::{now_ms, EngineError, HistoryPage, PresenceLeave, PresenceManager, Present};
use crate::protocol::push::PresencePush;
use async_trait::async_trait;
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often presence entries of local connections are refreshed.
const PRESENCE_REFRESH: Duration = Duration::from_secs(10);
/// Presence entries not refreshed for this long are expired (a node died).
const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// A room's presence keys expire this long after the last refresh by any live node.
const PRESENCE_KEY_TTL: Duration = Duration::from_secs(90);
/// Leaves one presence leave script takes at most (each is a few commands inside it: a
/// call stays short, and Redis runs nothing else meanwhile).
const LEAVES_PER_CALL: usize = 64;
/// Refresh scripts in flight at once (each room is its own slot in a cluster, so they
/// cannot share one pipeline; a multiplexed connection pipelines them on the wire).
const REFRESH_PARALLEL: usize = 64;

fn presence_member(user: &str, conn: &str) -> String {
    [user, "\0", conn].concat()
}

/// What the sweep script lists of a room's users.
#[derive(Clone, Copy)]
enum List {
    /// Their count alone (a refresh).
    Count,
    /// At most this many of them.
    UpTo(usize),
}

/// The sweep script's call for a room, up to its members.
fn sweep(
    s: &Shared,
    room: &str,
    now: u64,
    expiry: u64,
    key_ttl: u64,
    list: List,
) -> redis::ScriptInvocation<'static> {
    let route = s.keys.route(room);
    let mut call = scripts::PRESENCE_SWEEP.key(s.keys.presence_conns(room));
    call.key(s.keys.presence_users(room))
        .arg(now)
        .arg(expiry)
        .arg(key_ttl)
        .arg(if s.namespaces.of(room).join_leave_events {
            route.channel.as_str()
        } else {
            ""
        })
        .arg(room)
        .arg(route.command)
        .arg(route.prefix)
        .arg(match list {
            List::Count => 0,
            // `-1`: all of them (no HSCAN asked for more than Redis counts in an i64).
            List::UpTo(n) => i64::try_from(n).unwrap_or(-1),
        });
    call
}

/// Keeps this node's presence entries alive and sweeps entries nobody refreshed (a
/// crashed node's); a room's presence keys expire once no live node refreshes them.
pub(super) async fn refresh_presence(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PRESENCE_REFRESH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut by_room: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (room, user, member) in lock(&shared.local_presence).iter() {
            by_room
                .entry(room.clone())
                .or_default()
                .push(presence_member(user, member));
        }
        let now = now_ms();
        let expiry = now + PRESENCE_TTL.as_millis() as u64;
        let key_ttl = PRESENCE_KEY_TTL.as_millis() as u64;
        let results = futures_util::stream::iter(by_room)
            .map(|(room, members)| {
                let shared = shared.clone();
                async move {
                    let mut call = sweep(&shared, &room, now, expiry, key_ttl, List::Count);
                    for m in &members {
                        call.arg(m);
                    }
                    let mut conn = shared.conn();
                    let swept = shared
                        .run(call.invoke_async::<(usize, Vec<String>, Vec<String>)>(&mut conn))
                        .await;
                    match swept {
                        Ok((_, _, missing)) => Ok(restore(&shared, &room, missing).await),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(REFRESH_PARALLEL)
            .collect::<Vec<_>>()
            .await;
        let restored: usize = results.iter().filter_map(|r| r.as_ref().ok()).sum();
        if restored > 0 {
            tracing::info!(restored, "presence entries lost from Redis restored");
        }
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if let Some(e) = failed.first() {
            tracing::warn!(error = %e, failed = failed.len(), "presence refresh failed");
        }
    }
}

/// Joins again the local connections whose entries the refresh found missing from Redis
/// (a restart without persistence, a failover that lost recent writes, an evicted key,
/// another node's sweep while this one was cut off): without it they stayed absent, to
/// `presence` and to a `dm: sharedRoom` check, until they reconnected. Only connections
/// still local now: one that left since the refresh listed it is not brought back (its
/// leave took it out of the local set before its script was sent). Returns how many.
async fn restore(s: &Shared, room: &str, missing: Vec<String>) -> usize {
    let mut n = 0;
    for member in missing {
        let Some((user, conn)) = member.split_once('\0') else {
            continue;
        };
        let key = (room.to_string(), user.to_string(), conn.to_string());
        if !lock(&s.local_presence).contains(&key) {
            continue;
        }
        // Not `enter`: that adds the connection to the local set, and one that leaves
        // meanwhile would then be refreshed for good. A leave racing this call can leave
        // an entry behind, which nobody refreshes: swept (and announced) after
        // PRESENCE_TTL.
        match join_script(s, room, user, conn).await {
            Ok(_) => n += 1,
            Err(e) => tracing::warn!(room, error = %e, "presence entry not restored"),
        }
    }
    n
}

/// Marks a connection present (the presence join script) and returns the room's head the
/// script read after that: the joiner subscribed first, so its catch-up may start there.
/// None when the namespace keeps no presence (nothing to run), when the head shows the
/// store behind what this node saw (the caller's own read applies the epoch rule), or
/// when the reply is not one.
pub(super) async fn enter(
    s: &Shared,
    room: &str,
    user: &str,
    conn: &str,
) -> Result<Option<HistoryPage>, EngineError> {
    if !s.namespaces.of(room).presence {
        return Ok(None);
    }
    let raw = join_script(s, room, user, conn).await?;
    lock(&s.local_presence).insert((room.to_string(), user.to_string(), conn.to_string()));
    // The entry is in: a head that does not parse only means the caller reads its own.
    match parse_history(room, raw) {
        Ok(head) => Ok(s.unless_behind(room, head).ok()),
        Err(e) => {
            tracing::warn!(room, error = %e, "presence join: the room's head did not parse");
            Ok(None)
        }
    }
}

/// The presence join script for a connection: its entry added (a no-op when it is
/// there), the user's join announced when it is the user's first entry; returns the
/// room's head the script read.
async fn join_script(
    s: &Shared,
    room: &str,
    user: &str,
    conn: &str,
) -> Result<Vec<redis::Value>, EngineError> {
    // An empty frame tells the script not to announce the join.
    let frame = if s.namespaces.of(room).join_leave_events {
        PresencePush::change(room, user, true).frame()
    } else {
        String::new()
    };
    let route = s.keys.route(room);
    let expiry = now_ms() + PRESENCE_TTL.as_millis() as u64;
    let mut c = s.conn();
    s.run(
        scripts::PRESENCE_JOIN
            .key(s.keys.presence_conns(room))
            .key(s.keys.presence_users(room))
            .key(s.keys.meta(room))
            .key(s.keys.stream(room))
            .arg(presence_member(user, conn))
            .arg(user)
            .arg(expiry)
            .arg(&route.channel)
            .arg(frame)
            .arg(PRESENCE_KEY_TTL.as_millis() as u64)
            .arg(route.command)
            .arg(&route.prefix)
            .arg(s.retention(room).max_age.as_millis() as u64)
            .invoke_async(&mut c),
    )
    .await
}

#[async_trait]
impl PresenceManager for RedisEngine {
    async fn presence_join(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        enter(&self.shared, room, user, conn).await.map(drop)
    }

    async fn presence_leave(&self, room: &str, user: &str, conn: &str) -> Result<(), EngineError> {
        self.presence_leave_all(&[PresenceLeave { room, user, conn }])
            .await
    }

    async fn presence_leave_all(&self, leaves: &[PresenceLeave<'_>]) -> Result<(), EngineError> {
        let s = &self.shared;
        let leaves: Vec<&PresenceLeave> = leaves
            .iter()
            .filter(|l| s.namespaces.of(l.room).presence)
            .collect();
        {
            let mut local = lock(&s.local_presence);
            for l in &leaves {
                local.remove(&(l.room.to_string(), l.user.to_string(), l.conn.to_string()));
            }
        }
        // One script call takes many leaves; in a cluster a call stays in one slot, so
        // there each room's leaves go together.
        let mut groups: Vec<Vec<&PresenceLeave>> = Vec::new();
        if s.keys.cluster {
            let mut by_room: BTreeMap<&str, Vec<&PresenceLeave>> = BTreeMap::new();
            for l in leaves {
                by_room.entry(l.room).or_default().push(l);
            }
            for group in by_room.into_values() {
                groups.extend(group.chunks(LEAVES_PER_CALL).map(<[_]>::to_vec));
            }
        } else {
            groups.extend(leaves.chunks(LEAVES_PER_CALL).map(<[_]>::to_vec));
        }
        let calls = groups.into_iter().map(|group| async move {
            let mut call = scripts::PRESENCE_LEAVE.prepare_invoke();
            for l in group {
                let ns = s.namespaces.of(l.room);
                let frame = if ns.join_leave_events {
                    PresencePush::change(l.room, l.user, false).frame()
                } else {
                    String::new()
                };
                let route = s.keys.route(l.room);
                call.key(s.keys.presence_conns(l.room))
                    .key(s.keys.presence_users(l.room))
                    .arg(presence_member(l.user, l.conn))
                    .arg(l.user)
                    .arg(&route.channel)
                    .arg(frame)
                    .arg(route.command)
                    .arg(&route.prefix);
            }
            let mut c = s.conn();
            s.run(call.invoke_async::<i64>(&mut c)).await.map(drop)
        });
        let done = futures_util::future::join_all(calls).await;
        done.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }

    async fn active_rooms(&self, limit: usize) -> Result<Vec<(String, usize)>, EngineError> {
        let s = &self.shared;
        // Presence hashes are the rooms someone is in: SCAN them (an admin call, bounded
        // by `limit`; SCAN never blocks Redis for long) on every master of a cluster.
        let mut names = BTreeSet::new();
        for node in s.scan_targets().await? {
            s.scan_into(node, &s.keys.presence_users("*"), limit, &mut |k| {
                if let Some(room) = s.keys.room_of_presence_users(k) {
                    names.insert(room);
                }
                names.len()
            })
            .await?;
            if names.len() >= limit {
                break;
            }
        }
        let names: Vec<String> = names.into_iter().take(limit).collect();
        // One HLEN per room (each its own slot in a cluster); `limit` bounds them.
        let counts = futures_util::future::join_all(names.iter().map(|room| {
            let key = s.keys.presence_users(room);
            let mut c = s.conn();
            async move {
                s.run(redis::AsyncCommands::hlen::<_, usize>(&mut c, key))
                    .await
            }
        }))
        .await;
        let mut out = Vec::new();
        for (room, n) in names.into_iter().zip(counts) {
            let n = n?;
            if n > 0 {
                out.push((room, n));
            }
        }
        Ok(out)
    }

    async fn is_present(&self, room: &str, user: &str) -> Result<bool, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        s.run(redis::AsyncCommands::hexists(
            &mut c,
            s.keys.presence_users(room),
            user,
        ))
        .await
    }

    async fn presence_upto(&self, room: &str, limit: usize) -> Result<Present, EngineError> {
        let s = &self.shared;
        let mut c = s.conn();
        let call = sweep(s, room, now_ms(), 0, 0, List::UpTo(limit));
        let (count, users, _): (usize, Vec<String>, Vec<String>) =
            s.run(call.invoke_async(&mut c)).await?;
        // Sorted, and once each: a scan may return a user twice while Redis rehashes.
        let users: BTreeSet<String> = users.into_iter().collect();
        Ok(Present {
            users: users.into_iter().take(limit).collect(),
            count,
        })
    }
}
