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
    let started = Instant::now();
    let deadline = started + c.max_time;
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
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
                    let _ = held_tx.send(());
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
                }
            }
        }));
        if Instant::now() > deadline {
            break;
        }
    }
    drop(held_tx);
    let mut open_count = 0usize;
    while open_count + (errors.load(Ordering::Relaxed) as usize) < tasks.len() {
        match tokio::time::timeout_at(deadline.into(), held_rx.recv()).await {
            Ok(Some(())) => open_count += 1,
            _ => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
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
            "errors": errors.load(Ordering::Relaxed),
            "connect_per_s": (open_count as f64 / connect_secs).round(),
            "gateway_rss_bytes": after.map(|a| a.rss_bytes),
            "gateway_rss_per_conn_bytes": rss_per_conn.map(|x| x.round()),
            "gateway_cpu_us_per_connect": cpu_us_per(before, connected, open_count as u64),
            "loadgen_cpu_us_per_connect": cpu_us_per(own_before, own_connected, open_count as u64),
        }),
    ))
}
