//! `churn`: connect / authenticate / join / leave / close cycles at a rate, each its own
//! connection, at most `concurrency` in flight.

use super::conn::{command, finish, gateway_usage, open};
use super::stats::cpu_us_per;
use super::Common;
use crate::procstat;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
                let _ = ws.close(None).await;
                Ok::<_, String>(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
