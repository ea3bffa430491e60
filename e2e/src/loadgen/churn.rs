//! `churn`: connect / authenticate / join / leave / close cycles at a rate, each its own
//! connection, at most `concurrency` in flight.

use super::conn::{command, finish, gateway_usage, open};
use super::stats::cpu_us_per;
use super::Common;
use crate::procstat;
use futures_util::StreamExt;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// `churn`: connect/auth/join/leave/close cycles at a rate.
pub async fn churn(
    c: &Common,
    rate: f64,
    concurrency: usize,
    duration: Duration,
) -> Result<serde_json::Value, String> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let window = duration.min(c.max_time);
    let cpu0 = gateway_usage(c);
    let own0 = procstat::usage(std::process::id()).ok();
    let started = Instant::now();
    let mut i = 0usize;
    let mut skipped = 0u64;
    while started.elapsed() < window {
        tick.tick().await;
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            skipped += 1; // the gateway (or this generator) is not keeping up
            continue;
        };
        i += 1;
        let (c, ok, errors) = (c.clone(), ok.clone(), errors.clone());
        tokio::spawn(async move {
            let r = async {
                let mut ws = open(&c, i, &format!("churn{i}")).await?;
                command(
                    &mut ws,
                    json!({"type": "join", "id": 1, "room": format!("churn{}", i % 100)}),
                )
                .await?;
                command(
                    &mut ws,
                    json!({"type": "leave", "id": 2, "room": format!("churn{}", i % 100)}),
                )
                .await?;
                ws.close(None).await.map_err(|e| format!("close: {e}"))?;
                closed(&mut ws, CLOSE_WAIT).await
            }
            .await;
            match r {
                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("churn: {e}");
                    }
                    0
                }
            };
            drop(permit);
        });
    }
    let _ = sem.acquire_many(concurrency.max(1) as u32).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu1 = gateway_usage(c);
    let own1 = procstat::usage(std::process::id()).ok();
    let done = ok.load(Ordering::Relaxed);
    Ok(finish(
        c,
        "churn",
        json!({
            "target_rate": rate,
            "cycles_per_s": (done as f64 / secs).round(),
            "cycles": done,
            "errors": errors.load(Ordering::Relaxed),
            "skipped_at_concurrency_limit": skipped,
            "jwt": c.jwt_secret.is_some(),
            // When this is alike the gateway's, the generator's core bounds the rate too.
            "loadgen_cpu_us_per_cycle": cpu_us_per(own0, own1, done),
            "gateway_cpu_us_per_cycle": match (cpu0, cpu1) {
                (Some(a), Some(b)) if done > 0 => Some(((b.cpu_secs - a.cpu_secs) * 1e6 / done as f64).round()),
                _ => None,
            },
        }),
    ))
}

/// The most a cycle waits for the server's side of the close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Waits for the server's close frame or the end of the stream, after sending ours: a
/// cycle is done when the server has closed, not when the close was sent (a gateway that
/// lags behind its closes would look faster otherwise). Past `within`, an error.
async fn closed<S>(ws: &mut WebSocketStream<S>, within: Duration) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                // Read after the close handshake completed, or an end without a close
                // frame: the server has closed either way.
                Some(Err(WsError::ConnectionClosed))
                | Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                    return Ok(())
                }
                Some(Err(e)) => return Err(format!("closing: {e}")),
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .map_err(|_| format!("no close from the server within {within:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A short churn against an in-process gateway: every cycle completes, and both CPU
    /// figures (the gateway's, here this process's, and the generator's own) are there.
    #[tokio::test]
    async fn a_churn_run_completes_its_cycles_and_reports_both_cpus() {
        let gw = crate::TestGateway::default().await;
        let common = Common {
            pid: Some(std::process::id()),
            ..Common::for_test(gw.gateway.addr)
        };
        let out = churn(&common, 100.0, 8, std::time::Duration::from_millis(500))
            .await
            .expect("churn");
        assert_eq!(out["errors"], 0, "{out}");
        let cycles = out["cycles"].as_u64().unwrap_or(0);
        assert!(cycles >= 10, "{out}");
        assert!(out["loadgen_cpu_us_per_cycle"].as_f64().is_some(), "{out}");
        assert!(out["gateway_cpu_us_per_cycle"].as_f64().is_some(), "{out}");
    }

    /// A client stream and the server's end of it, in memory.
    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (client, server) = tokio::io::duplex(4096);
        let ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (ws, server)
    }

    /// The server answers the close (tungstenite replies when it reads one): the cycle is
    /// done.
    #[tokio::test]
    async fn a_cycle_ends_with_the_servers_close() {
        let (mut ws, server) = pair().await;
        let mut server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let answer = tokio::spawn(async move { while let Some(Ok(_)) = server.next().await {} });
        ws.close(None).await.expect("send close");
        assert_eq!(closed(&mut ws, Duration::from_secs(30)).await, Ok(()));
        answer.await.expect("server");
    }

    /// A server that never answers the close (its socket open, unread): an error, not a
    /// done cycle.
    #[tokio::test]
    async fn a_close_the_server_never_answers_is_an_error() {
        let (mut ws, _server_never_reads) = pair().await;
        ws.close(None).await.expect("send close");
        let r = closed(&mut ws, Duration::from_millis(100)).await;
        assert!(r.is_err_and(|e| e.contains("no close")));
    }
}
