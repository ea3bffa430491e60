//! `--reader raw`: the members read by one thread of their own, with no WebSocket library
//! and no runtime: one `epoll` (mio) over every member's socket, each ready socket read
//! into its own buffer and its frames parsed in place.
//!
//! Why: at 50 messages a second into 1,000 members, one message is 1,000 reads in a row
//! on the load generator's core as well as 1,000 writes on the gateway's, and the last
//! copy is read no sooner than the slower of the two takes for all of them. The default
//! reader (a tokio task and a tungstenite stream per member) costs ~4.5-5 µs a delivery
//! here, about what the gateway costs to write one, so its p99 measures the client as much
//! as the server. This one skips the task wake-up, the stop-token `select!` and the frame
//! copy per read: what remains is the kernel's (`epoll_wait`, `recvmsg`, the ACKs).
//!
//! It is a client for the gateway's frames only: unfragmented, unmasked server frames.
//! It answers pings (the gateway closes members that stay silent) and drops a member whose
//! socket closes or sends what it cannot read, counting it.

use super::conn::{connect, request};
use super::upgrade::handshake;
use super::Common;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most one read of a member takes, as the tungstenite reader's buffer.
const READ: usize = 4 * 1024;
/// The largest frame a member accepts (the gateway's are a few hundred bytes).
const MAX_FRAME: usize = 1 << 20;

/// One complete frame at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// Where the payload starts and ends in the buffer.
    pub payload: std::ops::Range<usize>,
}

/// The frame at the front of `buf`: `Ok(None)` while it is incomplete; an error for what a
/// server must not send (a masked frame) or a frame over [`MAX_FRAME`].
pub(super) fn frame(buf: &[u8]) -> Result<Option<Frame>, String> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err("a masked frame from the server".into());
    }
    let (len, head) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as usize, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (
                usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
                10,
            ),
            None => return Ok(None),
        },
        n => (n as usize, 2),
    };
    if len > MAX_FRAME {
        return Err(format!("a frame of {len} bytes (at most {MAX_FRAME})"));
    }
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        payload: head..head + len,
    }))
}

/// A client frame (masked, as RFC 6455 requires of clients) of `opcode` with `payload`.
pub(super) fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// Opens member number `i` as `user` and joins it to `room`, with this module's frames
/// (no WebSocket library on its socket at any point): the member, and what was read after
/// the join's reply.
pub(super) async fn join(c: &Common, i: usize, user: &str, room: &str) -> Result<Member, String> {
    let stream = connect(c, i).await?;
    let (path, token) = request(c, user);
    let (mut stream, mut read) = handshake(stream, c.target, &path, token.as_deref()).await?;
    let welcome = next_text(&mut stream, &mut read).await?;
    if !welcome.contains("\"welcome\"") {
        return Err(format!("expected welcome, got {welcome}"));
    }
    let text = serde_json::json!({"type": "join", "id": 1, "room": room}).to_string();
    stream
        .write_all(&client_frame(0x1, text.as_bytes()))
        .await
        .map_err(|e| format!("join: {e}"))?;
    loop {
        // Presence may come before the reply.
        let reply = next_text(&mut stream, &mut read).await?;
        if reply.starts_with("{\"type\":\"ok\"") {
            break;
        }
        if reply.starts_with("{\"type\":\"error\"") {
            return Err(format!("join {room}: {reply}"));
        }
    }
    let socket = stream.into_std().map_err(|e| format!("socket: {e}"))?;
    Ok(Member {
        socket,
        pending: read,
    })
}

/// The next text frame on a member still being set up (its pings answered).
async fn next_text(
    stream: &mut tokio::net::TcpStream,
    read: &mut Vec<u8>,
) -> Result<String, String> {
    loop {
        while let Some(f) = frame(read)? {
            let payload = read[f.payload.clone()].to_vec();
            read.drain(..f.payload.end);
            match (f.fin, f.opcode) {
                (true, 0x1) => {
                    return String::from_utf8(payload).map_err(|_| "a text frame not UTF-8".into())
                }
                (true, 0x9) => stream
                    .write_all(&client_frame(0xA, &payload))
                    .await
                    .map_err(|e| format!("pong: {e}"))?,
                (true, 0x2 | 0xA) => {}
                (fin, opcode) => {
                    return Err(format!("unexpected frame (fin {fin}, opcode {opcode})"))
                }
            }
        }
        if stream
            .read_buf(read)
            .await
            .map_err(|e| format!("read: {e}"))?
            == 0
        {
            return Err("closed while setting up".into());
        }
    }
}

/// What a member does with the frames it read.
pub(super) trait OnText: Send + 'static {
    /// A text frame's payload, just read.
    fn text(&mut self, payload: &[u8]);
}

/// What the reader thread hands back when it stops.
pub(super) struct Finished<T> {
    pub on_text: T,
    /// Members dropped: their socket closed or failed, or sent a frame this cannot read.
    pub dropped: u64,
}

/// A member's socket and what it has read but not yet parsed (the bytes that followed
/// the upgrade response, at first).
pub(super) struct Member {
    pub socket: std::net::TcpStream,
    pub pending: Vec<u8>,
}

struct Open {
    socket: TcpStream,
    /// Read bytes are `buf[..end]`. Sized once (and grown only for a frame larger than
    /// it): zero-filling a buffer per read, as `Vec::resize` would, costs a memset a read.
    buf: Vec<u8>,
    end: usize,
}

impl Open {
    fn new(socket: TcpStream, pending: &[u8]) -> Open {
        let mut buf = vec![0; READ.max(pending.len())];
        buf[..pending.len()].copy_from_slice(pending);
        Open {
            socket,
            buf,
            end: pending.len(),
        }
    }
}

/// The reader thread, reading until stopped.
pub(super) struct Reading<T> {
    thread: std::thread::JoinHandle<Finished<T>>,
    stop: Arc<AtomicBool>,
}

impl<T: OnText> Reading<T> {
    /// Starts the reader thread over `members`.
    pub(super) fn start(members: Vec<Member>, mut on_text: T) -> Result<Reading<T>, String> {
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        let mut open = Vec::with_capacity(members.len());
        for (i, m) in members.into_iter().enumerate() {
            m.socket
                .set_nonblocking(true)
                .map_err(|e| format!("nonblocking: {e}"))?;
            let mut socket = TcpStream::from_std(m.socket);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)
                .map_err(|e| format!("epoll add: {e}"))?;
            open.push(Some(Open::new(socket, &m.pending)));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("raw-reader".into())
            .spawn(move || {
                let dropped = read_all(poll, &mut open, &mut on_text, &flag);
                Finished { on_text, dropped }
            })
            .map_err(|e| format!("reader thread: {e}"))?;
        Ok(Reading { thread, stop })
    }

    /// Stops the thread (within its poll timeout) and takes back what it read.
    pub(super) async fn stop(self) -> Result<Finished<T>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(finished)) => Ok(finished),
            _ => Err("the raw reader thread panicked".into()),
        }
    }
}

/// A run's members, reading: a tokio task each (each hands back its latencies), or all of
/// them on the raw reader's thread.
pub(super) enum Readers<T> {
    Tasks(Vec<tokio::task::JoinHandle<Vec<u64>>>),
    Raw(Reading<T>),
}

/// What the members read, once stopped.
pub(super) struct Stopped {
    pub latencies: Vec<u64>,
    /// Members the raw reader dropped.
    pub dropped: u64,
    /// Reader tasks that failed (their latencies are missing).
    pub failed: u64,
}

impl<T: OnText> Readers<T> {
    /// Waits for the tasks (told to stop by the caller) or stops the thread; `latencies`
    /// takes the raw reader's from its [`OnText`].
    pub(super) async fn stop(
        self,
        latencies: impl FnOnce(T) -> Vec<u64>,
    ) -> Result<Stopped, String> {
        match self {
            Readers::Tasks(tasks) => {
                let mut stopped = Stopped {
                    latencies: Vec::new(),
                    dropped: 0,
                    failed: 0,
                };
                for t in tasks {
                    match t.await {
                        Ok(v) => stopped.latencies.extend(v),
                        Err(_) => stopped.failed += 1,
                    }
                }
                Ok(stopped)
            }
            Readers::Raw(reading) => {
                let finished = reading.stop().await?;
                Ok(Stopped {
                    latencies: latencies(finished.on_text),
                    dropped: finished.dropped,
                    failed: 0,
                })
            }
        }
    }
}

/// The reader thread's loop. mio's readiness is edge-triggered: a ready member is read
/// until it would block.
fn read_all<T: OnText>(
    mut poll: Poll,
    open: &mut [Option<Open>],
    on_text: &mut T,
    stop: &AtomicBool,
) -> u64 {
    let mut events = Events::with_capacity(256);
    let mut dropped = 0;
    let mut drop_if = |slot: &mut Option<Open>, failed: bool| {
        if failed {
            *slot = None;
            dropped += 1;
        }
    };
    // What was read before the thread started (after the upgrade and the join).
    for slot in open.iter_mut() {
        let failed = slot.as_mut().is_some_and(|m| parse(m, on_text).is_err());
        drop_if(slot, failed);
    }
    while !stop.load(Ordering::Relaxed) {
        // The timeout only bounds how late the thread sees `stop`.
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        for event in events.iter() {
            if let Some(slot) = open.get_mut(event.token().0) {
                let failed = slot.as_mut().is_some_and(|m| drain(m, on_text).is_err());
                drop_if(slot, failed);
            }
        }
    }
    dropped
}

/// Reads a ready member until it would block, parsing as it goes.
fn drain<T: OnText>(m: &mut Open, on_text: &mut T) -> Result<(), ()> {
    loop {
        if m.end == m.buf.len() {
            // A frame larger than the buffer (parse took every complete one).
            let grown = (m.buf.len() * 2).min(MAX_FRAME + 14);
            if grown == m.buf.len() {
                return Err(());
            }
            m.buf.resize(grown, 0);
        }
        match m.socket.read(&mut m.buf[m.end..]) {
            Ok(0) => return Err(()),
            Ok(n) => {
                m.end += n;
                parse(m, on_text)?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}

/// Takes every complete frame off the front of the member's buffer.
fn parse<T: OnText>(m: &mut Open, on_text: &mut T) -> Result<(), ()> {
    let mut at = 0;
    while let Some(f) = frame(&m.buf[at..m.end]).map_err(|_| ())? {
        let payload = at + f.payload.start..at + f.payload.end;
        match (f.fin, f.opcode) {
            (true, 0x1) => on_text.text(&m.buf[payload.clone()]),
            (true, 0x2) | (true, 0xA) => {}
            // A pong of a small frame goes out whole into an idle socket's buffer.
            (true, 0x9) => {
                let pong = client_frame(0xA, &m.buf[payload.clone()]);
                m.socket.write_all(&pong).map_err(|_| ())?;
            }
            // A close, or a fragment: the gateway sends neither to a member that reads.
            _ => return Err(()),
        }
        at = payload.end;
    }
    m.buf.copy_within(at..m.end, 0);
    m.end -= at;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_length_form_and_waits_for_the_rest() {
        let short = super::super::floor::text_frame("hi");
        assert_eq!(
            frame(&short),
            Ok(Some(Frame {
                fin: true,
                opcode: 1,
                payload: 2..4
            }))
        );
        assert_eq!(frame(&short[..3]), Ok(None));
        let medium = super::super::floor::text_frame(&"x".repeat(300));
        assert_eq!(
            frame(&medium).map(|f| f.map(|f| f.payload)),
            Ok(Some(4..304))
        );
        assert_eq!(frame(&medium[..3]), Ok(None));
        let long = super::super::floor::text_frame(&"x".repeat(70_000));
        assert_eq!(
            frame(&long).map(|f| f.map(|f| f.payload)),
            Ok(Some(10..70_010))
        );
        assert_eq!(frame(&[]), Ok(None));
    }

    #[test]
    fn refuses_masked_and_oversized_frames() {
        assert!(frame(&client_frame(1, b"hi")).is_err());
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(frame(&huge).is_err());
    }

    /// Collects every text payload.
    struct Texts(Vec<Vec<u8>>);

    impl OnText for Texts {
        fn text(&mut self, payload: &[u8]) {
            self.0.push(payload.to_vec());
        }
    }

    /// One member over a real socket: a frame split over two writes, a frame larger than
    /// the read buffer, a ping (answered with its payload, masked), and what came before
    /// the thread started; then a close, which drops the member.
    #[tokio::test]
    async fn reads_split_and_large_frames_answers_pings_and_drops_on_close() {
        use super::super::floor::text_frame;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let member =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let before = text_frame("before");
        let reading = Reading::start(
            vec![Member {
                socket: member,
                pending: before,
            }],
            Texts(Vec::new()),
        )
        .expect("start");
        let split = text_frame("split in two");
        server.write_all(&split[..5]).expect("write");
        std::thread::sleep(Duration::from_millis(50));
        server.write_all(&split[5..]).expect("write");
        let large = "y".repeat(3 * READ);
        server.write_all(&text_frame(&large)).expect("write");
        server
            .write_all(&[0x89, 3, b'a', b'b', b'c'])
            .expect("ping");
        let mut pong = [0u8; 9];
        server.read_exact(&mut pong).expect("a pong");
        assert_eq!(&pong[..2], &[0x8A, 0x80 | 3]);
        let unmasked: Vec<u8> = pong[6..]
            .iter()
            .zip(&pong[2..6])
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"abc");
        server.write_all(&[0x88, 0]).expect("close");
        // The member's socket closes when it is dropped (and counted): wait for that, not
        // for a guess at when the thread gets to it.
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rest = [0u8; 16];
        assert_eq!(
            server.read(&mut rest).expect("the member's socket closes"),
            0
        );
        let finished = reading.stop().await.expect("stop");
        let texts = finished.on_text.0;
        assert_eq!(
            texts,
            [
                b"before".to_vec(),
                b"split in two".to_vec(),
                large.into_bytes()
            ]
        );
        assert_eq!(finished.dropped, 1);
    }

    #[test]
    fn a_client_frame_unmasks_to_its_payload() {
        let f = client_frame(0x9, b"ping!");
        assert_eq!(f[0], 0x89);
        assert_eq!(f[1], 0x80 | 5);
        let unmasked: Vec<u8> = f[6..]
            .iter()
            .zip(f[2..6].iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"ping!");
    }
}
