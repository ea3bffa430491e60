//! `idle`: open N authenticated connections and hold them; the connect rate, the CPU each
//! connect cost on both sides, and the gateway's resident memory per connection.

use super::conn::{finish, gateway_usage, open};
use super::stats::cpu_us_per;
use super::Common;
use crate::procstat;
use futures_util::StreamExt;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `idle`: hold N connections.
pub async fn idle(
    c: &Common,
    n: usize,
    concurrency: usize,
    hold: Duration,
) -> Result<serde_json::Value, String> {
    let before = gateway_usage(c);
    let own_before = procstat::usage(std::process::id()).ok();
    let listen_before = listen_counters();
    let started = Instant::now();
    let deadline = started + c.max_time;
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    // Every attempt reports how it ended, a failed one too: the held connections keep
    // their sender, so the channel never closes, and a failure that reported nothing
    // left the wait below waiting for it until --max-time.
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(tokio::sync::Notify::new());
    for i in 0..n {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let c = c.clone();
        let errors = errors.clone();
        let held_tx = held_tx.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let ws = open(&c, i, &format!("idle{i}")).await;
            drop(permit);
            match ws {
                Ok(mut ws) => {
                    let _ = held_tx.send(Attempt::Held);
                    // Keep reading so pings are answered, until told to stop.
                    tokio::select! {
                        _ = stop.notified() => {}
                        _ = async { while let Some(Ok(_)) = ws.next().await {} } => {}
                    }
                    let _ = ws.close(None).await;
                }
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("idle: connection {i}: {e}");
                    }
                    let _ = held_tx.send(Attempt::Failed);
                }
            }
        }));
        if Instant::now() > deadline {
            break;
        }
    }
    drop(held_tx);
    let seen = attempts(&mut held_rx, tasks.len(), deadline).await;
    if !seen.all {
        eprintln!(
            "idle: {} of {} connection attempts unfinished at --max-time",
            tasks.len() - seen.held - seen.failed,
            tasks.len()
        );
    }
    let open_count = seen.held;
    let connect_secs = started.elapsed().as_secs_f64();
    let listen = match (listen_before, listen_counters()) {
        (Some(b), Some(a)) => Some(a.since(b)),
        _ => None,
    };
    // CPU per connect of both sides: on a machine this small the load generator's own
    // cost can be what limits the rate (see `loadgen_cpu_us_per_connect`).
    let connected = gateway_usage(c);
    let own_connected = procstat::usage(std::process::id()).ok();
    tokio::time::sleep(hold.min(deadline.saturating_duration_since(Instant::now()))).await;
    let after = gateway_usage(c);
    let rss_per_conn = match (before, after) {
        (Some(b), Some(a)) if open_count > 0 => {
            Some((a.rss_bytes.saturating_sub(b.rss_bytes)) as f64 / open_count as f64)
        }
        _ => None,
    };
    stop.notify_waiters();
    for t in tasks {
        t.abort();
    }
    Ok(finish(
        c,
        "idle",
        json!({
            "connections": open_count,
            "connections_asked": n,
            "errors": errors.load(Ordering::Relaxed),
            "connect_per_s": (open_count as f64 / connect_secs).round(),
            "gateway_rss_bytes": after.map(|a| a.rss_bytes),
            "gateway_rss_per_conn_bytes": rss_per_conn.map(|x| x.round()),
            "gateway_cpu_us_per_connect": cpu_us_per(before, connected, open_count as u64),
            "loadgen_cpu_us_per_connect": cpu_us_per(own_before, own_connected, open_count as u64),
            // SYN drops during the connect phase (null when /proc/net/netstat is unreadable).
            "listen_overflows": listen.map(|l| l.overflows),
            "listen_drops": listen.map(|l| l.drops),
        }),
    ))
}

/// How one connection attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Held,
    Failed,
}

/// What the connect phase's wait saw.
#[derive(Debug, PartialEq, Eq)]
struct Attempts {
    held: usize,
    failed: usize,
    /// Every attempt reported before the deadline.
    all: bool,
}

/// Waits until all `n` attempts have reported how they ended, or `deadline`: the connect
/// phase ends with the last attempt, whether it failed or not.
async fn attempts(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Attempt>,
    n: usize,
    deadline: Instant,
) -> Attempts {
    let mut seen = Attempts {
        held: 0,
        failed: 0,
        all: false,
    };
    while seen.held + seen.failed < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(Attempt::Held)) => seen.held += 1,
            Ok(Some(Attempt::Failed)) => seen.failed += 1,
            _ => return seen,
        }
    }
    seen.all = true;
    seen
}

/// The kernel's counts of connections a listener refused (`TcpExt` in
/// /proc/net/netstat): `ListenOverflows`, a full accept queue, and `ListenDrops`, every
/// SYN dropped at a listener (the overflows included). The client retries a dropped SYN
/// after a second or more, so one drop is a stall of the connect rate. The counters are the
/// whole machine's (its network namespace's), not the gateway's: `make bench` runs alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listen {
    overflows: u64,
    drops: u64,
}

impl Listen {
    fn since(self, before: Listen) -> Listen {
        Listen {
            overflows: self.overflows.saturating_sub(before.overflows),
            drops: self.drops.saturating_sub(before.drops),
        }
    }
}

/// The counters now; None when the file cannot be read or lacks them.
fn listen_counters() -> Option<Listen> {
    parse_listen(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

/// The counters from /proc/net/netstat's text: a `TcpExt:` line of names, then one of
/// values in the same order.
fn parse_listen(netstat: &str) -> Option<Listen> {
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let get = |key: &str| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == key)
            .and_then(|(_, v)| v.parse().ok())
    };
    Some(Listen {
        overflows: get("ListenOverflows")?,
        drops: get("ListenDrops")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed attempt ends the wait as a held one does, while the held connections keep
    /// their senders (the channel stays open): the wait returns with every attempt seen,
    /// not at the deadline.
    #[tokio::test]
    async fn the_connect_phase_ends_with_the_last_attempt_even_a_failed_one() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _held_connection_keeps_this = tx.clone();
        for a in [
            Attempt::Held,
            Attempt::Failed,
            Attempt::Held,
            Attempt::Failed,
        ] {
            tx.send(a).expect("send");
        }
        let seen = attempts(&mut rx, 4, Instant::now() + Duration::from_secs(30)).await;
        assert_eq!(
            seen,
            Attempts {
                held: 2,
                failed: 2,
                all: true
            }
        );
    }

    #[test]
    fn reads_the_listen_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
                    TcpExt: 0 7 9 12\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 0\n";
        let l = parse_listen(text).expect("counters");
        assert_eq!((l.overflows, l.drops), (7, 9));
        let later = Listen {
            overflows: 10,
            drops: 9,
        };
        assert_eq!(
            later.since(l),
            Listen {
                overflows: 3,
                drops: 0
            }
        );
        assert_eq!(parse_listen("IpExt: InNoRoutes\nIpExt: 0\n"), None);
        assert_eq!(parse_listen("TcpExt: ListenDrops\nTcpExt: x\n"), None);
    }
}
