//! The fast path on a real socket: a live message goes straight to the socket when
//! nothing is ahead of it, and the byte stream holds whole frames in order whatever the
//! socket accepts.

use super::*;
use crate::protocol::StreamPosition;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Client = WebSocketStream<TcpStream>;

fn env(seq: u64, body: usize) -> Arc<Envelope> {
    let frame = format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(body));
    Envelope::for_test("r", seq, frame)
}

/// A connection over loopback: the queue (with the fast path attached), the writer and a
/// reader of the server's side (which answers pings), and the client's socket. The room
/// `r` is joined (replayed from 0) before it returns. `delivered` counts the messages
/// written, by the fast path ([`Conn::live`]) and by the writer, as the node's metric does.
struct Conn {
    q: OutboundQueue,
    delivered: Arc<AtomicU64>,
    client: Client,
    writer: tokio::task::JoinHandle<WriterOutcome>,
}

async fn connect(max_bytes: usize) -> Conn {
    let (client, accepted) = socket_pair().await;
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let wire = Wire::new(accepted);
    let server = WebSocketStream::from_raw_socket(WireIo(wire.clone()), Role::Server, None).await;
    let (sink, mut stream) = server.split();
    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let (q, rx) = queue(100_000, max_bytes);
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = delivered.clone();
    let on_delivered: OnDelivered = Arc::new(move |_, _| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    q.attach(wire);
    let settings = WriterSettings {
        heartbeat: Duration::from_secs(60),
        on_delivered,
    };
    let writer = tokio::spawn(run_writer(sink, rx, settings));
    let mut conn = Conn {
        q,
        delivered,
        client,
        writer,
    };
    let joined = Outbound::Replay {
        room: "r".into(),
        from: StreamPosition::new("e", 0),
        msgs: Vec::new(),
    };
    assert!(conn.q.push(joined));
    assert!(conn.q.frame("joined"));
    assert_eq!(conn.text().await, "joined");
    conn.settled().await;
    conn
}

impl Conn {
    /// Delivers a live message as the hub does when the room is not busy, and counts it
    /// if it was written at once.
    fn live(&self, env: Arc<Envelope>) -> bool {
        let done = self.q.pusher().deliver(&env, Via::Direct);
        if done == Delivered::Written {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
        done.taken()
    }

    async fn text(&mut self) -> String {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.client.next());
            match next.await.expect("a frame in time") {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("the stream ended or broke: {other:?}"),
            }
        }
    }

    /// Waits until the writer is idle with nothing queued.
    async fn settled(&self) {
        for _ in 0..1000 {
            {
                let items = self.q.shared.items();
                if !items.busy && items.queue.is_empty() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the writer never settled");
    }
}

#[tokio::test]
async fn an_idle_connection_gets_a_live_message_without_its_writer() {
    let mut c = connect(1 << 20).await;
    // No await between the push and the look: the writer task cannot have run, so a
    // counted delivery was written by the push itself.
    assert!(c.live(env(1, 10)));
    assert_eq!(c.delivered.load(Ordering::Relaxed), 1);
    assert!(c.live(env(1, 10)), "a duplicate is taken...");
    assert_eq!(c.delivered.load(Ordering::Relaxed), 1, "...and dropped");
    assert!(c.live(env(2, 10)));
    assert!(c.q.frame("reply"), "a frame goes through the writer");
    assert!(c.live(env(3, 10)), "and one behind it waits");
    assert!(c.text().await.starts_with("{\"seq\":1,"));
    assert!(c.text().await.starts_with("{\"seq\":2,"));
    assert_eq!(c.text().await, "reply");
    assert!(c.text().await.starts_with("{\"seq\":3,"));
    c.settled().await;
    // A catch-up holds live messages: not written until its replay is out.
    assert!(c.q.push(Outbound::BeginCatchup("r".into())));
    c.settled().await;
    assert!(c.live(env(5, 10)));
    assert_eq!(c.delivered.load(Ordering::Relaxed), 3, "held, not written");
    let replay = Outbound::Replay {
        room: "r".into(),
        from: StreamPosition::new("e", 3),
        msgs: vec![env(4, 10)],
    };
    assert!(c.q.push(replay));
    assert!(c.q.push(Outbound::Release("r".into())));
    assert!(c.text().await.starts_with("{\"seq\":4,"));
    assert!(c.text().await.starts_with("{\"seq\":5,"));
    c.q.close(crate::disconnect::SLOW_CONSUMER);
    let outcome = c.writer.await.expect("writer");
    assert_eq!(outcome.delivered, 5);
    assert_eq!(
        outcome.positions.get("r"),
        Some(&StreamPosition::new("e", 5))
    );
}

/// A reply with nothing ahead of it is written by the task that makes it: on this
/// single-threaded runtime the writer cannot run between the push and the look, so an
/// empty queue means the push wrote it. A reply behind a queued frame waits its turn.
#[tokio::test]
async fn a_reply_with_nothing_ahead_goes_out_without_the_writer() {
    use futures_util::FutureExt;
    let mut c = connect(1 << 20).await;
    let pushed =
        c.q.push_paced(Outbound::Frame("reply".into()))
            .now_or_never();
    assert_eq!(pushed, Some(true));
    assert!(c.q.shared.items().queue.is_empty(), "queued, not written");
    assert_eq!(c.text().await, "reply");
    assert!(c.q.frame("direct"));
    assert!(c.q.shared.items().queue.is_empty(), "frame() takes it too");
    assert_eq!(c.text().await, "direct");
    assert!(
        c.q.push(Outbound::Frame("first".into())),
        "push() always queues"
    );
    let pushed =
        c.q.push_paced(Outbound::Frame("second".into()))
            .now_or_never();
    assert_eq!(pushed, Some(true));
    assert_eq!(
        c.q.shared.items().queue.len(),
        2,
        "behind the first, queued"
    );
    assert_eq!(c.text().await, "first");
    assert_eq!(c.text().await, "second");
    c.q.close(crate::disconnect::SLOW_CONSUMER);
    let closed =
        c.q.push_paced(Outbound::Frame("late".into()))
            .now_or_never();
    assert_eq!(closed, Some(false), "nothing is written once closing");
}

/// A client that does not read fills the socket: the fast path's last frame goes in part,
/// the rest waits in the wire, and what follows queues behind it. Meanwhile the client's
/// pings are answered. Once it reads, every frame arrives whole and in order.
#[tokio::test]
async fn a_full_socket_leaves_only_whole_frames_in_order() {
    let mut c = connect(64 << 20).await;
    let mut sent = 0u64;
    while sent < 5_000 {
        sent += 1;
        assert!(c.live(env(sent, 8000)), "queued or written");
        if !c.q.shared.items().queue.is_empty() {
            break; // the socket is full
        }
    }
    assert!(sent < 5_000, "the socket never filled");
    let fast = c.delivered.load(Ordering::Relaxed);
    for _ in 0..200 {
        sent += 1;
        assert!(c.live(env(sent, 8000)));
    }
    c.client
        .send(Message::Ping("p".into()))
        .await
        .expect("ping");
    for seq in 1..=sent {
        let text = c.text().await;
        let want = format!("{{\"seq\":{seq},");
        assert!(
            text.starts_with(&want),
            "frame {seq}: {}",
            &text[..20.min(text.len())]
        );
        assert_eq!(text.len(), env(seq, 8000).frame.len(), "frame {seq} whole");
    }
    assert!(fast > 1, "the first ones took the fast path");
    c.settled().await;
    assert_eq!(c.delivered.load(Ordering::Relaxed), sent);
}

/// A writer's batch stops at [`writer::BATCH_BYTES`]: what it takes out of the queue no
/// longer counts against the queue's byte bound, so a batch of many large frames would
/// hold far more than the bound (and a slow reader's close frame would wait behind it).
#[tokio::test]
async fn a_batch_of_large_frames_takes_only_its_byte_bound_from_the_queue() {
    let c = connect(64 << 20).await;
    fill(&c, 8000);
    // The socket is full and the client does not read: the writer, woken for the queued
    // message, takes one batch in one go and then waits on the socket.
    let big = "z".repeat(30_000);
    for _ in 0..40 {
        assert!(c.q.frame(big.clone()));
    }
    let queued = 41;
    let mut left = queued;
    for _ in 0..5000 {
        left = c.q.shared.items().queue.len();
        if left < queued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let taken = queued - left;
    assert!(taken > 0, "the writer took nothing");
    let most = 1 + writer::BATCH_BYTES.div_ceil(big.len());
    assert!(
        taken <= most,
        "one batch took {taken} items, at most {most} fit"
    );
}

/// Fills the client's socket through the fast path (the client does not read) until a
/// message has to queue; returns how many messages of `body` bytes went.
fn fill(c: &Conn, body: usize) -> u64 {
    let mut sent = 0u64;
    while c.q.shared.items().queue.is_empty() {
        sent += 1;
        assert!(sent < 5_000, "the socket never filled");
        assert!(c.live(env(sent, body)), "queued or written");
    }
    sent
}

/// The last frame `fill` sent went in part (its rest waits in the wire) or was queued;
/// the client never reads, so it is not wholly on the socket when the connection closes:
/// the positions the writer reports (what the session saves) stop before it.
#[tokio::test]
async fn a_frame_not_wholly_on_the_socket_at_the_close_is_not_reported_written() {
    let c = connect(64 << 20).await;
    let last = fill(&c, 8000);
    tokio::time::sleep(Duration::from_millis(50)).await; // the writer waits on the socket
    c.q.close(crate::disconnect::DRAINING);
    let outcome = c.writer.await.expect("writer");
    let before_it = StreamPosition::new("e", last - 1);
    assert_eq!(outcome.positions.get("r"), Some(&before_it), "{last} sent");
}

/// A slow consumer that keeps reading gets its close frame behind everything the socket
/// holds for it, though reading that backlog takes longer than the close frame's grace
/// on a socket that takes nothing.
#[tokio::test]
async fn a_client_still_reading_gets_its_close_frame_behind_its_backlog() {
    let mut c = connect(64 << 20).await;
    let sent = fill(&c, 8000);
    c.q.close(crate::disconnect::SLOW_CONSUMER);
    // Paced so that the whole backlog takes 4 s to read.
    let pace = (Duration::from_millis(4000) / sent as u32).max(Duration::from_millis(1));
    let mut read = 0u64;
    let close = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), c.client.next());
        match next.await.expect("a frame in time") {
            Some(Ok(Message::Text(_))) => read += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("after {read} of {sent} frames: {other:?}"),
        }
        tokio::time::sleep(pace).await;
    };
    assert_eq!(close, Some(1013));
    assert!(read >= sent - 1, "read {read} of {sent}");
    c.writer.await.expect("writer");
}

/// The hub writes a room's message straight to the socket unless the room is busy: then
/// the writer takes it (and batches).
#[tokio::test]
async fn a_busy_room_goes_through_the_writers() {
    let mut c = connect(1 << 20).await;
    let metrics = crate::metrics::Metrics::new();
    let hub = Arc::new(crate::hub::Hub::default().counting(metrics.deliveries()));
    let room: Arc<str> = "r".into();
    hub.subscribe(&room, 1, c.q.clone());
    assert_eq!(hub.deliver(&env(1, 10)), 1);
    assert_eq!(metrics.delivered.get(), 1, "written and counted by the hub");
    assert_eq!(c.delivered.load(Ordering::Relaxed), 0, "not by the writer");
    // As if that fan-out had taken an hour: the next message comes too soon after it.
    hub.set_direct_cost("r", Duration::from_secs(3600));
    assert_eq!(hub.deliver(&env(2, 10)), 1);
    assert_eq!(metrics.delivered.get(), 1, "queued for the writer");
    assert!(c.text().await.starts_with("{\"seq\":1,"));
    assert!(c.text().await.starts_with("{\"seq\":2,"));
    c.settled().await;
    assert_eq!(
        c.delivered.load(Ordering::Relaxed),
        1,
        "the writer counts its own"
    );
}

/// A client's socket and the server's end of it, over loopback.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.expect("connect"), accepted.expect("accept").0)
}

/// Bytes the wire starts with (the chat endpoint's 101, held back) go out first, in the
/// same write as the first frame, whether the fast path or the writer sends it.
#[tokio::test]
async fn what_the_wire_starts_with_goes_out_with_the_first_write() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let held = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
    let mut live = Vec::new();
    wire::encode_text(&mut live, b"live");
    // The fast path: held bytes, then the frame.
    let (mut client, accepted) = socket_pair().await;
    let wire = Wire::with_pending(accepted, held.to_vec());
    assert_eq!(wire.try_text(b"live"), Some(true));
    let mut got = vec![0u8; held.len() + live.len()];
    client.read_exact(&mut got).await.expect("read");
    assert_eq!(got, [&held[..], &live].concat());
    // The writer's (tungstenite's) write: held bytes, then the write.
    let (mut client, accepted) = socket_pair().await;
    let wire = Wire::with_pending(accepted, held.to_vec());
    let mut io = WireIo(wire.clone());
    io.write_all(b"welcome").await.expect("write");
    io.flush().await.expect("flush");
    let mut got = vec![0u8; held.len() + 7];
    client.read_exact(&mut got).await.expect("read");
    assert_eq!(got, [&held[..], b"welcome"].concat());
    assert_eq!(
        wire.try_text(b"live"),
        Some(true),
        "nothing pending any more"
    );
    let mut got = vec![0u8; live.len()];
    client.read_exact(&mut got).await.expect("read");
    assert_eq!(got, live);
}

/// Pending bytes the socket takes only part of go on from where it stopped, and the
/// write behind them is taken only once all of them went.
#[tokio::test]
async fn pending_bytes_the_socket_takes_in_parts_go_first_and_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, accepted) = socket_pair().await;
    // More than any socket buffer takes at once.
    let held: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    let expected = [&held[..], b"tail"].concat();
    let wire = Wire::with_pending(accepted, held);
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.expect("read");
        got == expected
    });
    let mut io = WireIo(wire);
    io.write_all(b"tail").await.expect("write");
    io.flush().await.expect("flush");
    assert!(
        reader.await.expect("reader"),
        "the bytes in order, none lost"
    );
}

/// The fast path behind pending bytes the socket takes only part of: what it did not
/// take (the rest of those bytes, then the frame) waits for the flush, in order.
#[tokio::test]
async fn a_frame_behind_pending_bytes_the_socket_takes_in_part_follows_them_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, accepted) = socket_pair().await;
    let held: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut frame = Vec::new();
    wire::encode_text(&mut frame, b"tail");
    let expected = [&held[..], &frame].concat();
    let wire = Wire::with_pending(accepted, held);
    assert_eq!(wire.try_text(b"tail"), Some(false), "16 MiB at once?");
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.expect("read");
        got == expected
    });
    WireIo(wire).flush().await.expect("flush");
    assert!(reader.await.expect("reader"), "in order, none lost");
}

/// A read shorter than its buffer emptied the socket: the socket's read readiness goes
/// with it, so the next read waits for the kernel's event instead of making a syscall that
/// finds nothing. A read that filled its buffer keeps it (more may be waiting), and the end
/// of the stream stays readable.
#[tokio::test]
async fn a_short_read_drops_the_read_readiness_and_loses_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, accepted) = socket_pair().await;
    let wire = Wire::new(accepted);
    let mut io = WireIo(wire.clone());
    let ready_now = || {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        wire.tcp().poll_read_ready(&mut cx).is_ready()
    };
    let mut buf = [0u8; 64];
    let within = |secs| Duration::from_secs(secs);
    client.write_all(b"hello").await.expect("write");
    let n = tokio::time::timeout(within(5), io.read(&mut buf)).await;
    assert_eq!(n.expect("read in time").expect("read"), 5);
    assert!(!ready_now(), "a short read left the socket marked readable");
    // More bytes bring a new event: nothing is missed.
    client.write_all(&[b'x'; 100]).await.expect("write");
    let n = tokio::time::timeout(within(5), io.read(&mut buf)).await;
    assert_eq!(n.expect("read in time").expect("read"), 64);
    assert!(
        ready_now(),
        "a full read must keep the readiness: 36 bytes wait"
    );
    let n = tokio::time::timeout(within(5), io.read(&mut buf)).await;
    assert_eq!(n.expect("the rest without a new event").expect("read"), 36);
    drop(client);
    for _ in 0..2 {
        let n = tokio::time::timeout(within(5), io.read(&mut buf)).await;
        assert_eq!(n.expect("end of stream in time").expect("read"), 0);
    }
}

/// A fan-out prefetches a member's socket from where its queue says it is: the attached
/// socket, and nothing once the queue let go of it.
#[tokio::test]
async fn the_queue_says_where_its_socket_is_while_it_has_one() {
    let c = connect(1 << 20).await;
    let at = |q: &OutboundQueue| q.shared.wire_at.load(Ordering::Relaxed).cast_const();
    let fast = c.q.shared.items().fast.as_ref().map(Arc::as_ptr);
    assert_eq!(fast.map(|w| w.cast::<u8>()), Some(at(&c.q)));
    c.q.close(crate::disconnect::SLOW_CONSUMER);
    c.writer.await.expect("writer");
    assert!(c.q.shared.items().fast.is_none());
    assert!(at(&c.q).is_null());
}
