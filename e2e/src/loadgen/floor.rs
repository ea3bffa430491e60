//! `floor`: what the kernel alone costs a fan-out on this machine, for reading the
//! gateway's fan-out figures beside it. No gateway: one writer thread (pinned where the
//! gateway would run) writes the frame a gateway would send, a `msg` of the same size
//! made by the gateway's own `protocol`, to N loopback sockets in turn, one `write` each,
//! at the fan-out run's rate; this process reads them as `fanout` reads its members, with
//! either `--reader` (a WebSocket stream per socket on this thread, or the raw reader's
//! thread). The writer's CPU per delivery is the floor
//! for any server that writes each delivery with one syscall: on loopback it includes the
//! receiving side's TCP work and the reader's wake-up, as the gateway's figure does.

use super::raw::{self, Readers};
use super::stats::{cpu_us_per, number_after, Latencies};
use super::Reader;
use chat_gateway::engine::{new_epoch, now_ms};
use chat_gateway::protocol::push::{msg_frame, MsgContent};
use futures_util::StreamExt;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Shape of a floor run.
#[derive(clap::Args, Debug, Clone)]
pub struct FloorShape {
    /// Sockets written to (the room's members).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Messages per second (each written to every socket).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Body size in bytes (approximate), as `fanout --body`.
    #[arg(long, default_value_t = 100)]
    pub body: usize,
    /// Measured duration (after a second of warm-up).
    #[arg(long, default_value = "10s", value_parser = super::humantime_parse)]
    pub duration: Duration,
    /// The core the writer thread runs on (where `make bench` pins the gateway).
    #[arg(long, default_value_t = 0)]
    pub writer_cpu: usize,
    /// How the members read, as `fanout --reader`.
    #[arg(long, value_enum, default_value_t = Reader::Tungstenite)]
    pub reader: Reader,
    /// Label for the summary line.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// What the writer measured over the measured messages.
struct Written {
    cpu: Duration,
    /// The thread's CPU over the whole run, warm-up included.
    cpu_all: Duration,
    /// Per measured message: from its first write to its last (ns).
    spans: Vec<u64>,
    /// Per measured message: how long after its scheduled time (start + seq / rate) its
    /// first write began (ns). Its latency is stamped when it is written, so a writer
    /// running behind shows here, not in the latency.
    lags: Vec<u64>,
    /// When the first measured write began and the last one ended.
    first_write: Option<Instant>,
    last_write: Option<Instant>,
    writes: u64,
    errors: u64,
    pinned: bool,
    /// The last frame's size on the wire.
    frame_bytes: usize,
}

/// The measured messages: `first..end` by seq (the ones before warm the sockets up).
#[derive(Clone, Copy)]
struct Window {
    first: u64,
    end: u64,
}

impl Window {
    fn holds(&self, seq: u64) -> bool {
        (self.first..self.end).contains(&seq)
    }
}

/// `floor`: see the module.
pub async fn floor(shape: FloorShape) -> Result<serde_json::Value, String> {
    if !(shape.rate > 0.0 && shape.rate.is_finite()) {
        return Err("floor needs --rate above 0 (messages per second)".into());
    }
    if shape.members == 0 {
        return Err("floor needs at least one member".into());
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("bind: {e}"))?;
    let (readers, writers) = pairs(&listener, addr, shape.members).await?;
    let warm = shape.rate.ceil() as u64;
    let window = Window {
        first: warm,
        end: warm + (shape.rate * shape.duration.as_secs_f64()).round() as u64,
    };
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let timed = Timed {
        epoch,
        window,
        received: received.clone(),
        lat: Vec::new(),
    };
    let readers = match shape.reader {
        Reader::Tungstenite => {
            let config = super::conn::member_config();
            let mut tasks = Vec::with_capacity(readers.len());
            for socket in readers {
                let ws = WebSocketStream::from_raw_socket(socket, Role::Client, Some(config)).await;
                tasks.push(tokio::spawn(read(ws, timed.clone(), stop.clone())));
            }
            Readers::Tasks(tasks)
        }
        Reader::Raw => {
            let mut members = Vec::with_capacity(readers.len());
            for socket in readers {
                let socket = socket.into_std().map_err(|e| format!("socket: {e}"))?;
                members.push(raw::Member {
                    socket,
                    pending: Vec::new(),
                });
            }
            Readers::Raw(raw::Reading::start(members, timed)?)
        }
    };
    let own = || crate::procstat::usage(std::process::id()).ok();
    let own_from = own();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let s = shape.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(write(writers, &s, epoch, window));
    });
    let written = done_rx
        .await
        .map_err(|_| "the writer thread panicked".to_string())?;
    // What is in flight arrives within milliseconds; the readers stop after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let own_to = own();
    stop.cancel();
    let stopped = readers.stop(|timed| timed.lat).await?;
    if stopped.failed > 0 {
        return Err(format!("{} reader tasks failed", stopped.failed));
    }
    let lat = stopped.latencies;
    let delivered = received.load(Ordering::Relaxed);
    let expected = (window.end - window.first) * shape.members as u64;
    // Over the time the measured writes took, not the nominal duration: a writer that
    // falls behind its rate shows in this figure.
    let written_per_s = match (written.first_write, written.last_write) {
        (Some(a), Some(b)) if b > a => {
            Some((written.writes as f64 / b.duration_since(a).as_secs_f64()).round())
        }
        _ => None,
    };
    let per = |n: u64| {
        if n == 0 {
            None
        } else {
            Some((written.cpu.as_secs_f64() * 1e6 / n as f64 * 100.0).round() / 100.0)
        }
    };
    Ok(serde_json::json!({
        "mode": "floor",
        "label": shape.label,
        "members": shape.members,
        "target_rate": shape.rate,
        "frame_bytes": written.frame_bytes,
        "written_per_s": written_per_s,
        "delivered": delivered,
        "drops": expected.saturating_sub(delivered),
        "write_errors": written.errors,
        "writer_cpu": shape.writer_cpu,
        "writer_pinned": written.pinned,
        "writer_cpu_us_per_delivery": per(written.writes),
        // This process's CPU but the writer's, over every message (warm-up included): the
        // readers' pace, which bounds the latency when the writer is the faster.
        "reader_cpu_us_per_delivery": reader_cpu(own_from, own_to, written.cpu_all, window.end * shape.members as u64),
        "latency_ms": Latencies::new(lat).json(),
        "fanout_ms": Latencies::new(written.spans).json(),
        "send_lag_ms": Latencies::new(written.lags).tail_json(),
    }))
}

/// CPU µs per delivery of this process but the writer thread, to a tenth.
fn reader_cpu(
    from: Option<crate::procstat::Usage>,
    to: Option<crate::procstat::Usage>,
    writer: Duration,
    n: u64,
) -> Option<f64> {
    let to = to.map(|u| crate::procstat::Usage {
        cpu_secs: u.cpu_secs - writer.as_secs_f64(),
        ..u
    });
    cpu_us_per(from, to, n).map(|us| us.max(0.0))
}

/// N connected pairs: the readers' sockets, the writer's.
async fn pairs(
    listener: &TcpListener,
    addr: SocketAddr,
    n: usize,
) -> Result<(Vec<tokio::net::TcpStream>, Vec<TcpStream>), String> {
    let mut readers = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        let client = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The connect is complete: the accept finds it queued and does not block.
        let (server, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        // Both ends as the gateway and the fan-out run's members set theirs.
        server
            .set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        let _ = client.set_nodelay(true);
        readers.push(client);
        writers.push(server);
    }
    Ok((readers, writers))
}

/// What a member does with a frame: the measured messages' latencies, counted.
#[derive(Clone)]
struct Timed {
    epoch: Instant,
    window: Window,
    received: Arc<AtomicU64>,
    lat: Vec<u64>,
}

impl raw::OnText for Timed {
    fn text(&mut self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let (Some(seq), Some(sent)) = (
            number_after(text, "\"seq\":"),
            number_after(text, "{\"t\":"),
        ) else {
            return;
        };
        if self.window.holds(seq) {
            self.received.fetch_add(1, Ordering::Relaxed);
            let now = self.epoch.elapsed().as_nanos() as u64;
            self.lat.push(now.saturating_sub(sent));
        }
    }
}

/// One member read by a task: the latencies of the measured messages it read.
async fn read(
    mut ws: WebSocketStream<tokio::net::TcpStream>,
    mut timed: Timed,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<u64> {
    use raw::OnText;
    loop {
        let m = tokio::select! {
            _ = stop.cancelled() => break,
            m = ws.next() => m,
        };
        match m {
            Some(Ok(Message::Text(t))) => timed.text(t.as_bytes()),
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    timed.lat
}

/// The writer thread: every `1/rate` seconds, one frame made once and written to every
/// socket. Its CPU is counted over the measured messages only (not while it sleeps).
fn write(mut sockets: Vec<TcpStream>, s: &FloorShape, epoch: Instant, window: Window) -> Written {
    let pinned = pin_to(s.writer_cpu);
    let gap = Duration::from_secs_f64(1.0 / s.rate);
    let start = Instant::now();
    // One room's: its epoch and a body of the run's size, as the publisher pads it.
    let room_epoch = new_epoch();
    let pad = pad(s.body);
    let mut cpu_from = Duration::ZERO;
    let cpu_start = thread_cpu();
    let mut written = Written {
        cpu: Duration::ZERO,
        cpu_all: Duration::ZERO,
        spans: Vec::with_capacity((window.end - window.first) as usize),
        lags: Vec::with_capacity((window.end - window.first) as usize),
        first_write: None,
        last_write: None,
        writes: 0,
        errors: 0,
        pinned,
        frame_bytes: 0,
    };
    for seq in 0..window.end {
        // Messages behind their time go at once, as the fan-out run's publisher sends them.
        let due = start + gap.mul_f64(seq as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if seq == window.first {
            cpu_from = thread_cpu();
        }
        let begun = Instant::now();
        let bytes = frame(seq, epoch.elapsed().as_nanos() as u64, &pad, &room_epoch);
        written.frame_bytes = bytes.len();
        // A socket that fails a write is dropped from the run.
        sockets.retain_mut(|socket| match socket.write_all(&bytes) {
            Ok(()) => {
                written.writes += u64::from(window.holds(seq));
                true
            }
            Err(_) => {
                written.errors += 1;
                false
            }
        });
        if window.holds(seq) {
            let end = Instant::now();
            written
                .spans
                .push(end.duration_since(begun).as_nanos() as u64);
            written
                .lags
                .push(begun.saturating_duration_since(due).as_nanos() as u64);
            written.first_write.get_or_insert(begun);
            written.last_write = Some(end);
        }
    }
    let cpu_end = thread_cpu();
    written.cpu = cpu_end.saturating_sub(cpu_from);
    written.cpu_all = cpu_end.saturating_sub(cpu_start);
    written
}

/// The padding that makes a body about `body` bytes, as `fanout`'s publisher makes it.
fn pad(body: usize) -> String {
    "x".repeat(body.saturating_sub(30))
}

/// A server's `msg` frame for message `seq` of a room in `epoch`, sent at `t` (ns since
/// the run's start), as one unmasked WebSocket text frame.
fn frame(seq: u64, t: u64, pad: &str, epoch: &str) -> Vec<u8> {
    let body_json = format!(r#"{{"t":{t},"p":"{pad}"}}"#);
    let text = match serde_json::value::RawValue::from_string(body_json) {
        Ok(raw) => msg_frame(
            MsgContent {
                room: "fan0",
                msg_id: "0123456789abcdef01234567",
                from: "pub0",
                body: &raw,
                traceparent: None,
            },
            seq,
            epoch,
            now_ms(),
        ),
        // The body is made above and always valid JSON.
        Err(_) => String::new(),
    };
    text_frame(&text)
}

/// `text` as one unmasked WebSocket text frame (what a server sends).
pub(super) fn text_frame(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 10);
    out.push(0x81); // FIN, text
    match text.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(text.as_bytes());
    out
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Moves this thread to `cpu`; false when it cannot (no such core).
fn pin_to(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays within it (checked
    // above); sched_setaffinity reads size_of::<cpu_set_t>() bytes of it, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_one_unmasked_text_frame_of_a_msg_the_reader_can_time() {
        let f = frame(7, 123_456, &pad(100), &new_epoch());
        assert_eq!(f[0], 0x81);
        let (len, text) = match f[1] {
            126 => (u16::from_be_bytes([f[2], f[3]]) as usize, &f[4..]),
            n => (n as usize, &f[2..]),
        };
        assert_eq!(len, text.len());
        let text = std::str::from_utf8(text).expect("utf-8");
        let v: serde_json::Value = serde_json::from_str(text).expect("json");
        assert_eq!(v["type"], "msg");
        assert_eq!(number_after(text, "\"seq\":"), Some(7));
        assert_eq!(number_after(text, "{\"t\":"), Some(123_456));
        assert!(number_after(text, "\"nope\":").is_none());
    }

    async fn every_member_reads_every_measured_message_once(reader: Reader) {
        let out = floor(FloorShape {
            members: 5,
            rate: 200.0,
            body: 100,
            duration: Duration::from_millis(100),
            writer_cpu: 0,
            reader,
            label: String::new(),
        })
        .await
        .expect("floor");
        // 200/s for 0.1 s: 20 measured messages to each of 5 members.
        assert_eq!(out["delivered"], 100);
        assert_eq!(out["drops"], 0);
        assert_eq!(out["write_errors"], 0);
        // 20 messages to 5 members over the time they took (about 0.1 s): how far above
        // or below 1000/s depends on the machine; that it is measured does not.
        assert!(
            out["written_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{out}"
        );
        assert!(out["send_lag_ms"]["max"].as_f64().is_some(), "{out}");
        assert!(out["writer_cpu_us_per_delivery"].as_f64().is_some());
    }

    #[tokio::test]
    async fn the_tungstenite_reader_reads_every_measured_message_once() {
        every_member_reads_every_measured_message_once(Reader::Tungstenite).await;
    }

    #[tokio::test]
    async fn the_raw_reader_reads_every_measured_message_once() {
        every_member_reads_every_measured_message_once(Reader::Raw).await;
    }

    #[tokio::test]
    async fn a_rate_of_zero_is_refused() {
        let shape = FloorShape {
            members: 1,
            rate: 0.0,
            body: 100,
            duration: Duration::from_millis(10),
            writer_cpu: 0,
            reader: Reader::Tungstenite,
            label: String::new(),
        };
        let err = floor(shape).await.expect_err("refused");
        assert!(err.contains("--rate"), "{err}");
    }
}
