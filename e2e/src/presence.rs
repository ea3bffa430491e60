//! Reading `presence` pushes: what a frame announces, and a join storm (issue 23) as the
//! protocol and cluster tests run it.

use crate::Client;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// The changes a `presence` frame announces: (user, joined), the joins first. Each user is
/// in one list of a frame, so the order between the lists does not matter.
pub fn presence_changes(frame: &Value) -> Vec<(String, bool)> {
    let list = |key: &str, joined: bool| -> Vec<(String, bool)> {
        frame[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str())
                    .map(|u| (u.to_string(), joined))
                    .collect()
            })
            .unwrap_or_default()
    };
    [list("joined", true), list("left", false)].concat()
}

impl Client {
    /// Reads `presence` frames of `room` (other frames stay pending), applying them to
    /// `members`, until `members` equals `want`; returns how many presence frames that
    /// took. Panics when none comes within [`crate::client::WAIT`].
    pub async fn presence_until(
        &mut self,
        room: &str,
        members: &mut BTreeSet<String>,
        want: &BTreeSet<String>,
    ) -> usize {
        let mut frames = 0;
        while members != want {
            let f = self.next_of("presence").await;
            if f["room"] != room {
                continue;
            }
            frames += 1;
            for (user, joined) in presence_changes(&f) {
                if joined {
                    members.insert(user);
                } else {
                    members.remove(&user);
                }
            }
        }
        frames
    }
}

/// A join storm: every client of `members` sends its `join` of `room` before any reply
/// is read, and each asks who is there (`presence`). Then `last` joins: every member reads
/// presence pushes up to the one announcing `last`, which comes after every push of the
/// storm (a node pushes a room's batches in order). Checks that each member knows
/// everyone (the answer plus the pushes) and returns how many presence frames each got.
pub async fn join_storm(members: &mut [Client], last: &mut Client, room: &str) -> Vec<usize> {
    let mut ids = Vec::new();
    for c in members.iter_mut() {
        ids.push(c.send_cmd(json!({"type": "join", "room": room})).await);
    }
    for (c, id) in members.iter_mut().zip(ids) {
        let r = c.reply(id).await;
        assert_eq!(r["type"], "ok", "join {room}: {r}");
    }
    let user = |c: &Client| c.welcome["user"].as_str().unwrap_or_default().to_string();
    let mut known = Vec::new();
    for c in members.iter_mut() {
        let list = c.request(json!({"type": "presence", "room": room})).await;
        let users: BTreeSet<String> = list["users"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        known.push(users);
    }
    last.join(room).await;
    let everyone: BTreeSet<String> = members.iter().chain([&*last]).map(user).collect();
    let mut frames = Vec::new();
    for (c, mut users) in members.iter_mut().zip(known) {
        let mut n = 0;
        loop {
            let f = c.next_of("presence").await;
            if f["room"] != room {
                continue;
            }
            n += 1;
            let changes = presence_changes(&f);
            assert!(changes.iter().all(|(_, joined)| *joined), "{f}");
            users.extend(changes.iter().map(|(u, _)| u.clone()));
            if changes.iter().any(|(u, _)| *u == user(last)) {
                break;
            }
        }
        assert_eq!(users, everyone, "what {} knows", user(c));
        frames.push(n);
    }
    frames
}

/// The join-storm verdict for `frames` (per member, from [`join_storm`]) of `n` members:
/// each member got at most one frame per ten joins, and all of them about one per join
/// in total, not the n²/2 of one frame per join per member.
pub fn assert_storm_batched(frames: &[usize], n: usize) {
    let total: usize = frames.iter().sum();
    assert!(
        frames.iter().all(|&f| f <= n / 10),
        "frames per member: {frames:?}"
    );
    assert!(
        total <= n * 3,
        "{total} frames in all, one per join: {}",
        n * n / 2
    );
}
