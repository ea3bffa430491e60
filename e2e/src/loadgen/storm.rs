//! `storm`: N members join one room at once (issue 23, join storms); counts the presence
//! frames they receive. One presence frame per join and member would be about N²/2.

use super::conn::{command, finish, gateway_usage, open};
use super::Common;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// The user whose join ends the storm: every presence push of the storm reaches a member
/// before the one announcing this user (a node pushes a room's changes in order).
const LAST: &str = "storm-last";

/// Whether a text frame is a presence push, and whether it announces [`LAST`]. Plain
/// substring checks, so any gateway build's frame shape is counted (A/B runs with
/// `GW=`): user ids of the run hold no characters JSON escapes.
fn presence_of(text: &str) -> Option<bool> {
    text.contains(r#""type":"presence""#)
        .then(|| text.contains(&format!("\"{LAST}\"")))
}

/// What one member saw.
struct Seen {
    frames: u64,
    complete: bool,
}

/// Runs the storm: connect `n` members, release all their joins at once, then join
/// [`LAST`] and wait until every member has heard of it (or `max_time`).
pub async fn storm(
    c: &Common,
    n: usize,
    concurrency: usize,
    room: &str,
) -> Result<serde_json::Value, String> {
    let deadline = tokio::time::Instant::now() + c.max_time;
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let (go_tx, go_rx) = watch::channel(false);
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    // Members connected, and connections that failed.
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (c, room) = (c.clone(), room.to_string());
        let (connected, failed) = (connected.clone(), failed.clone());
        let (mut go, joined_tx, seen_tx) = (go_rx.clone(), joined_tx.clone(), seen_tx.clone());
        tasks.push(tokio::spawn(async move {
            let ws = open(&c, i, &format!("storm{i}")).await;
            drop(permit);
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("storm: connection {i}: {e}");
                    }
                    return;
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            if go.wait_for(|go| *go).await.is_err() {
                return;
            }
            let join = json!({"type": "join", "id": 1, "room": room}).to_string();
            if let Err(e) = ws.send(Message::text(join)).await {
                return joined_tx.send(Err(e.to_string())).unwrap_or(());
            }
            let mut seen = Seen {
                frames: 0,
                complete: false,
            };
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                if t.contains(r#""ref":1"#) {
                    let ok = t.contains(r#""type":"ok""#);
                    let _ = joined_tx.send(if ok { Ok(()) } else { Err(t.to_string()) });
                } else if let Some(last) = presence_of(&t) {
                    seen.frames += 1;
                    if last {
                        seen.complete = true;
                        break;
                    }
                }
            }
            let _ = seen_tx.send(seen);
            // Held open until the run ends: a close would be a leave, pushed to the others.
            std::future::pending::<()>().await;
        }));
    }
    drop((joined_tx, seen_tx));
    // Every member connected (or failed) before the storm.
    while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n as u64 {
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let members = connected.load(Ordering::Relaxed) as usize;
    let cpu0 = gateway_usage(c);
    let started = Instant::now();
    let _ = go_tx.send(true);
    let (mut joins, mut errors) = (0usize, 0u64);
    while joins + (errors as usize) < members {
        match tokio::time::timeout_at(deadline, joined_rx.recv()).await {
            Ok(Some(Ok(()))) => joins += 1,
            Ok(Some(Err(e))) => {
                if errors < 3 {
                    eprintln!("storm: {e}");
                }
                errors += 1;
            }
            _ => break,
        }
    }
    let join_secs = started.elapsed().as_secs_f64();
    let mut last = open(c, n, LAST).await?;
    command(&mut last, json!({"type": "join", "id": 1, "room": room})).await?;
    let (mut frames, mut most, mut complete) = (0u64, 0u64, 0usize);
    for _ in 0..joins {
        match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
            Ok(Some(s)) => {
                frames += s.frames;
                most = most.max(s.frames);
                complete += usize::from(s.complete);
            }
            _ => break,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu1 = gateway_usage(c);
    for t in tasks {
        t.abort();
    }
    let n_joins = joins as u64 + 1; // the storm and LAST
    Ok(finish(
        c,
        "storm",
        json!({
            "members": joins,
            "errors": errors + failed.load(Ordering::Relaxed),
            "members_complete": complete,
            "presence_frames": frames,
            "presence_frames_per_member": if joins > 0 { (frames as f64 / joins as f64 * 10.0).round() / 10.0 } else { 0.0 },
            "presence_frames_per_member_max": most,
            "one_per_join_would_be": n_joins * n_joins / 2,
            "join_secs": (join_secs * 1000.0).round() / 1000.0,
            "storm_secs": (secs * 1000.0).round() / 1000.0,
            "gateway_cpu_ms": match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some(((b.cpu_secs - a.cpu_secs) * 1000.0).round()),
                _ => None,
            },
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::presence_of;

    #[test]
    fn counts_either_presence_shape_and_spots_the_last_join() {
        let batched =
            r#"{"type":"presence","room":"s","joined":["storm1","storm-last"],"left":[]}"#;
        assert_eq!(presence_of(batched), Some(true));
        let single = r#"{"type":"presence","room":"s","user":"storm2","event":"join"}"#;
        assert_eq!(presence_of(single), Some(false));
        assert_eq!(presence_of(r#"{"type":"msg","from":"storm-last"}"#), None);
    }
}
