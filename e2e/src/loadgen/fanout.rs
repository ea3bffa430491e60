//! `fanout`: rooms x members with publishers; delivered/s, latency, drops, CPU per
//! delivery. The members read with `--reader`: a tokio task and a tungstenite stream
//! each, or all of them on the raw reader's thread (`raw`).

use super::conn::{command, finish, gateway_usage, open};
use super::raw::{self, Readers};
use super::redis_stats;
use super::stats::{cpu_us_per, number_after, Latencies};
use super::Common;
use super::Reader;
use crate::procstat;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// When a message frame was sent (its body's `t`, ns on the run's clock).
fn sent_at(frame: &str) -> Option<u64> {
    number_after(frame, "{\"t\":")
}

struct Shared {
    epoch: Instant,
    measuring: AtomicBool,
    received: AtomicU64,
    received_in_window: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    /// Publishers stop.
    stop: tokio_util::sync::CancellationToken,
    /// Receivers stop: after the publishers, once what was in flight had time to arrive.
    done: tokio_util::sync::CancellationToken,
}

/// Shape of a fanout run.
#[derive(clap::Args, Debug, Clone)]
pub struct Shape {
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Members per room (receivers).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Publishers. The rooms are dealt out among them (publisher p sends to rooms p, p+P,
    /// ...; with more publishers than rooms, each has one room): each joins only the rooms
    /// it sends to, as the protocol requires, and sends to them round-robin.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Total messages per second over all publishers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Sends in flight per publisher when running as fast as possible.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Body size in bytes (approximate).
    #[arg(long, default_value_t = 100)]
    pub body: usize,
    /// Measured duration (after warm-up).
    #[arg(long, default_value = "10s", value_parser = super::humantime_parse)]
    pub duration: Duration,
    /// Publishers connect here instead of `--target` (another gateway process:
    /// cross-process delivery through Redis).
    #[arg(long)]
    pub publish_to: Option<SocketAddr>,
    /// How the members read: a tokio task and a tungstenite stream each, or one thread of
    /// raw frames over epoll (see `raw`).
    #[arg(long, value_enum, default_value_t = Reader::Tungstenite)]
    pub reader: Reader,
    /// A Redis to read `INFO commandstats` from at the measured window's start and end:
    /// the commands it ran per message acknowledged in that window (loopback only).
    #[arg(long)]
    pub redis: Option<SocketAddr>,
    /// redis-server's pid: its CPU over the measured window, per message.
    #[arg(long)]
    pub redis_pid: Option<u32>,
}

/// `fanout`: rooms x members with publishers.
pub async fn fanout(c: &Common, shape: Shape) -> Result<serde_json::Value, String> {
    let Shape {
        rooms,
        members,
        publishers,
        rate,
        window,
        body,
        duration,
        publish_to,
        reader,
        redis,
        redis_pid,
    } = shape;
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        measuring: AtomicBool::new(false),
        received: AtomicU64::new(0),
        received_in_window: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: tokio_util::sync::CancellationToken::new(),
        done: tokio_util::sync::CancellationToken::new(),
    });
    let room_names: Vec<String> = (0..rooms).map(|r| format!("fan{r}")).collect();
    // Receivers.
    let receivers = receivers(c, &sh, &room_names, members, reader).await?;
    // Publishers: each joined to the rooms it sends to (as the protocol requires), reading
    // its replies. Each receives its own rooms' messages too, so it holds only its share:
    // joined to every room, P publishers made the publishing gateway deliver every message
    // P more times (and this process read them), work that is no part of the measurement.
    let pad = "x".repeat(body.saturating_sub(30));
    let per_pub_rate = if rate > 0.0 {
        rate / publishers as f64
    } else {
        0.0
    };
    let mut pubs = Vec::new();
    let pub_common = Common {
        target: publish_to.unwrap_or(c.target),
        ..c.clone()
    };
    for p in 0..publishers {
        let mut ws = open(&pub_common, rooms * members + p, &format!("pub{p}")).await?;
        let mine = publisher_rooms(&room_names, p, publishers);
        for (k, room) in mine.iter().enumerate() {
            command(
                &mut ws,
                json!({"type": "join", "id": 1000 + k, "room": room}),
            )
            .await?;
        }
        let sh = sh.clone();
        let rooms = mine;
        let pad = pad.clone();
        pubs.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let in_flight = Arc::new(tokio::sync::Semaphore::new(window.max(1)));
            let reader_sh = sh.clone();
            let reader_sem = in_flight.clone();
            let reader = tokio::spawn(async move {
                while let Some(Ok(m)) = rx.next().await {
                    if let Message::Text(t) = m {
                        if t.starts_with("{\"type\":\"ok\"") {
                            reader_sh.acked.fetch_add(1, Ordering::Relaxed);
                            reader_sem.add_permits(1);
                        } else if t.starts_with("{\"type\":\"error\"") {
                            reader_sh.errors.fetch_add(1, Ordering::Relaxed);
                            reader_sem.add_permits(1);
                        }
                    }
                }
            });
            // Burst: ticks behind their time fire at once, message k due at start + k /
            // rate whenever it goes; `due` follows that schedule.
            let mut due = Instant::now();
            let mut tick = (per_pub_rate > 0.0).then(|| {
                let period = Duration::from_secs_f64(1.0 / per_pub_rate);
                let mut t = tokio::time::interval_at(due.into(), period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            // Per message sent in the measured window at a rate: how long after its
            // scheduled time it went out (ns). Its latency is stamped when it is sent, so
            // a publisher running behind (coordinated omission) shows here, not there.
            let mut lags = Vec::new();
            let mut n: u64 = 0;
            loop {
                let scheduled = due;
                if let Some(t) = tick.as_mut() {
                    tokio::select! { _ = sh.stop.cancelled() => break, _ = t.tick() => {} }
                    due += t.period();
                } else {
                    tokio::select! {
                        _ = sh.stop.cancelled() => break,
                        p = in_flight.acquire() => match p { Ok(p) => p.forget(), Err(_) => break },
                    }
                }
                n += 1;
                let room = &rooms[(n as usize) % rooms.len()];
                let now = Instant::now();
                if tick.is_some() && sh.measuring.load(Ordering::Relaxed) {
                    lags.push(now.saturating_duration_since(scheduled).as_nanos() as u64);
                }
                let t = now.duration_since(sh.epoch).as_nanos() as u64;
                let frame = format!(
                    r#"{{"type":"send","id":{n},"room":"{room}","body":{{"t":{t},"p":"{pad}"}}}}"#
                );
                if tx.send(Message::text(frame)).await.is_err() {
                    break;
                }
            }
            reader.abort();
            lags
        }));
    }
    let deadline = Instant::now() + c.max_time;
    let mut probe = redis_stats::Probe::connect(redis, redis_pid).await;
    // Warm-up, then the measured window.
    tokio::time::sleep(
        Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
    )
    .await;
    let window_len = duration.min(deadline.saturating_duration_since(Instant::now()));
    let redis0 = probe.read().await;
    let acked0 = sh.acked.load(Ordering::Relaxed);
    let cpu0 = gateway_usage(c);
    let own0 = procstat::usage(std::process::id()).ok();
    let r0 = sh.received.load(Ordering::Relaxed);
    sh.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(window_len).await;
    sh.measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let r1 = sh.received.load(Ordering::Relaxed);
    let cpu1 = gateway_usage(c);
    let own1 = procstat::usage(std::process::id()).ok();
    let acked1 = sh.acked.load(Ordering::Relaxed);
    let (redis_commands, redis_cpu_us) = redis_stats::between(redis0, probe.read().await);
    // Stop publishing, let in-flight messages arrive, then count what never did.
    let mut lags = Vec::new();
    let acked_at_stop = {
        sh.stop.cancel();
        for p in pubs {
            lags.extend(p.await.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sh.acked.load(Ordering::Relaxed)
    };
    let received_total = sh.received.load(Ordering::Relaxed);
    sh.done.cancel();
    // A failed task's latencies are missing; the raw reader's thread panicking loses all.
    let (lat, members_dropped) = match receivers.stop(|timed| timed.lat).await {
        Ok(stopped) => (stopped.latencies, stopped.dropped),
        Err(_) => (Vec::new(), 0),
    };
    let expected = acked_at_stop * members as u64;
    let delivered_in_window = r1 - r0;
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) if delivered_in_window > 0 => {
            Some((b.cpu_secs - a.cpu_secs) * 1e6 / delivered_in_window as f64)
        }
        _ => None,
    };
    let lat = Latencies::new(lat);
    Ok(finish(
        c,
        "fanout",
        json!({
            "rooms": rooms, "members": members, "publishers": publishers,
            "cross_process": publish_to.is_some(),
            "target_rate": rate, "window": window, "body_bytes": body,
            "published_per_s": (acked_at_stop as f64 / (secs + 1.0)).round(),
            // Every acknowledged send of the run (warm-up and drain included), and those
            // of the measured window: the Redis figures below are over that window.
            "published_total": acked_at_stop,
            "published_in_window": acked1 - acked0,
            "redis_commands_in_window": redis_commands,
            "redis_cpu_us_in_window": redis_cpu_us,
            "delivered_per_s": (delivered_in_window as f64 / secs).round(),
            "latency_ms": lat.json(),
            // Null without a rate: sends then follow the acknowledgements, not a schedule.
            "send_lag_ms": if rate > 0.0 { Latencies::new(lags).tail_json() } else { json!(null) },
            "drops": expected.saturating_sub(received_total),
            "send_errors": sh.errors.load(Ordering::Relaxed),
            "gateway_cpu_us_per_delivery": cpu_us.map(|x| (x * 1000.0).round() / 1000.0),
            // One thread reads every member's socket: when its cost per delivery is near
            // the gateway's, the client's pace is part of the latency.
            "loadgen_cpu_us_per_delivery": cpu_us_per(own0, own1, delivered_in_window),
            "gateway_rss_bytes": cpu1.map(|u| u.rss_bytes),
            "reader": reader,
            "members_dropped": members_dropped,
            "note": "receivers only; each publisher also receives its own rooms' messages (not counted)",
        }),
    ))
}

/// A received frame: counted if it is a timed message, and its latency kept if it came
/// in the measured window.
fn received(sh: &Shared, frame: &str, lat: &mut Vec<u64>) {
    if let Some(sent) = sent_at(frame) {
        sh.received.fetch_add(1, Ordering::Relaxed);
        if sh.measuring.load(Ordering::Relaxed) {
            sh.received_in_window.fetch_add(1, Ordering::Relaxed);
            let now = sh.epoch.elapsed().as_nanos() as u64;
            lat.push(now.saturating_sub(sent));
        }
    }
}

/// The raw reader's part: [`received`] for every text frame.
struct Timed {
    sh: Arc<Shared>,
    lat: Vec<u64>,
}

impl raw::OnText for Timed {
    fn text(&mut self, payload: &[u8]) {
        if let Ok(frame) = std::str::from_utf8(payload) {
            received(&self.sh, frame, &mut self.lat);
        }
    }
}

/// Opens and joins every room's members, and starts them reading.
async fn receivers(
    c: &Common,
    sh: &Arc<Shared>,
    rooms: &[String],
    members: usize,
    reader: Reader,
) -> Result<Readers<Timed>, String> {
    let mut tasks = Vec::new();
    let mut raw_members = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for m in 0..members {
            let (i, user) = (r * members + m, format!("m{r}x{m}"));
            if reader == Reader::Raw {
                raw_members.push(raw::join(c, i, &user, room).await?);
                continue;
            }
            let mut ws = open(c, i, &user).await?;
            command(&mut ws, json!({"type": "join", "id": 1, "room": room})).await?;
            let sh = sh.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let m = tokio::select! {
                        // Not at `stop`: messages acknowledged just before it are still
                        // on their way, and counting them missing made up drops.
                        _ = sh.done.cancelled() => break,
                        m = ws.next() => m,
                    };
                    match m {
                        Some(Ok(Message::Text(t))) => received(&sh, &t, &mut lat),
                        None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    }
                }
                lat
            }));
        }
    }
    if reader == Reader::Tungstenite {
        return Ok(Readers::Tasks(tasks));
    }
    let timed = Timed {
        sh: sh.clone(),
        lat: Vec::new(),
    };
    Ok(Readers::Raw(raw::Reading::start(raw_members, timed)?))
}

/// The rooms publisher `p` of `publishers` sends to: every `publishers`-th room from the
/// `p`-th (each room has one publisher), or one room when there are more publishers.
fn publisher_rooms(rooms: &[String], p: usize, publishers: usize) -> Vec<String> {
    if rooms.is_empty() {
        return Vec::new();
    }
    if publishers >= rooms.len() {
        return vec![rooms[p % rooms.len()].clone()];
    }
    rooms.iter().skip(p).step_by(publishers).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short fan-out against an in-process gateway whose heartbeat would close a member
    /// that does not answer its pings well within the run: each reader reads every copy of
    /// every message and keeps every member.
    async fn every_member_reads_every_message(reader: Reader) {
        let mut config = crate::test_config();
        config.heartbeat.interval = Duration::from_millis(150);
        config.limits.message_rate = 1000.0;
        config.limits.user_message_rate = 0.0;
        config.limits.message_burst = 1000;
        let gw = crate::TestGateway::start(config).await;
        let common = Common::for_test(gw.gateway.addr);
        let shape = Shape {
            rooms: 2,
            members: 5,
            publishers: 1,
            rate: 40.0,
            window: 16,
            body: 100,
            duration: Duration::from_millis(800),
            publish_to: None,
            reader,
            redis: None,
            redis_pid: None,
        };
        let out = fanout(&common, shape).await.expect("fanout");
        assert_eq!(out["drops"], 0, "{out}");
        assert_eq!(out["members_dropped"], 0, "{out}");
        assert_eq!(out["send_errors"], 0, "{out}");
        // 40/s over 2 rooms of 5 for 0.8 s: about 320 copies in the window, each timed.
        let delivered = out["delivered_per_s"].as_f64().unwrap_or(0.0);
        assert!(delivered > 150.0, "{out}");
        assert!(out["latency_ms"]["p99"].as_f64().is_some(), "{out}");
        assert!(out["send_lag_ms"]["p99"].as_f64().is_some(), "{out}");
    }

    #[tokio::test]
    async fn the_tungstenite_reader_reads_every_copy() {
        every_member_reads_every_message(Reader::Tungstenite).await;
    }

    #[tokio::test]
    async fn the_raw_reader_reads_every_copy_and_answers_pings() {
        every_member_reads_every_message(Reader::Raw).await;
    }

    #[test]
    fn deals_rooms_out_among_publishers() {
        let rooms: Vec<String> = (0..5).map(|r| format!("r{r}")).collect();
        let all: Vec<Vec<String>> = (0..2)
            .map(|p| super::publisher_rooms(&rooms, p, 2))
            .collect();
        assert_eq!(all, [vec!["r0", "r2", "r4"], vec!["r1", "r3"]]);
        assert_eq!(super::publisher_rooms(&rooms, 6, 7), ["r1"]);
        assert_eq!(super::publisher_rooms(&rooms, 0, 1), rooms);
    }

    #[test]
    fn finds_the_send_time() {
        let f = r#"{"type":"msg","room":"r","seq":3,"body":{"t":123456,"p":"xx"}}"#;
        assert_eq!(super::sent_at(f), Some(123456));
        assert_eq!(super::sent_at(r#"{"type":"ok"}"#), None);
    }
}
