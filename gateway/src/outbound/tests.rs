//! The queue and the writer: overflow, pacing, holding, ordering (how the writer ends:
//! `tests_writer.rs`).

use super::*;
use crate::disconnect::WRITE_TIMEOUT;
use crate::protocol::StreamPosition;
use futures_util::Sink;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub(super) fn env(room: &str, seq: u64) -> Arc<Envelope> {
    Envelope::for_test(room, seq, format!("{{\"seq\":{seq}}}"))
}

#[test]
fn overflow_by_bytes_closes_as_slow_consumer() {
    let (q, _rx) = queue(100, 25);
    assert!(q.push(Outbound::Msg(env("r", 1))));
    assert!(q.push(Outbound::Msg(env("r", 2))));
    assert!(!q.push(Outbound::Msg(env("r", 3))));
    // The number clients see (docs/protocol.md), not only the constant's name.
    let closed = q.close_reason().map(|r| (r.code, r.reason));
    assert_eq!(closed, Some((1013, "slow consumer")));
    assert!(q.queued_bytes() <= 25);
    assert!(!q.frame("late"), "closing queue refuses items");
}

/// A live frame heavier than the whole byte bound goes into an empty queue (a message of
/// `limits.maxFrameBytes`, allowed up to `outboundQueueBytes`, is a bigger frame), and
/// anything behind it overflows as usual.
#[test]
fn one_frame_heavier_than_the_bound_goes_into_an_empty_queue() {
    let (q, _rx) = queue(100, 25);
    assert!(q.push(Outbound::Frame("x".repeat(40).into())));
    assert_eq!(q.close_reason(), None);
    assert!(!q.push(Outbound::Frame("y".into())));
    assert_eq!(q.close_reason(), Some(SLOW_CONSUMER));
}

#[test]
fn overflow_by_frames_closes_as_slow_consumer() {
    let (q, _rx) = queue(2, 1 << 20);
    assert!(q.frame("a"));
    assert!(q.frame("b"));
    assert!(!q.frame("c"));
    let closed = q.close_reason().map(|r| (r.code, r.reason));
    assert_eq!(closed, Some((1013, "slow consumer")));
}

#[tokio::test]
async fn a_quiet_delivery_waits_for_its_wake_and_a_queued_one_does_not() {
    let (q, mut rx) = queue(8, 1024);
    let writer = tokio::spawn(async move {
        let first = rx.next().await;
        (first, rx)
    });
    tokio::task::yield_now().await; // the writer waits on an empty queue
    assert_eq!(
        q.pusher().deliver(&env("r", 1), Via::Quiet),
        Delivered::Queued
    );
    assert_eq!(
        q.pusher().deliver(&env("r", 2), Via::Quiet),
        Delivered::Queued
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!writer.is_finished(), "a quiet delivery woke the writer");
    q.pusher().wake();
    let (first, mut rx) = writer.await.expect("writer");
    assert!(matches!(first, Some(Outbound::Msg(e)) if e.seq == 1));
    assert!(matches!(rx.try_next(), Ok(Outbound::Msg(e)) if e.seq == 2));
    rx.settle();

    let writer = tokio::spawn(async move { rx.next().await.map(|_| ()) });
    tokio::task::yield_now().await;
    assert_eq!(
        q.pusher().deliver(&env("r", 3), Via::Queue),
        Delivered::Queued
    );
    let woken = tokio::time::timeout(Duration::from_secs(5), writer).await;
    assert!(
        matches!(woken, Ok(Ok(Some(())))),
        "a queued delivery wakes the writer"
    );
}

/// Quiet deliveries into `q` until the waiting writer wakes: how many it took.
async fn quiet_until_woken(q: &OutboundQueue, mut rx: OutboundReceiver) -> usize {
    let writer = tokio::spawn(async move { rx.next().await.is_some() });
    tokio::task::yield_now().await;
    for seq in 1..=100 {
        assert_eq!(
            q.pusher().deliver(&env("r", seq), Via::Quiet),
            Delivered::Queued,
            "queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        if writer.is_finished() {
            return seq as usize;
        }
    }
    panic!("never woken");
}

#[tokio::test]
async fn quiet_deliveries_wake_the_writer_once_the_queue_is_half_full_or_a_batch() {
    let (q, rx) = queue(8, 1 << 20);
    assert_eq!(quiet_until_woken(&q, rx).await, 4, "half of 8 frames");
    let (q, rx) = queue(1000, 1 << 20);
    assert_eq!(quiet_until_woken(&q, rx).await, 64, "the writer's batch");
    // Each `{"seq":N}` below 10 weighs 9 bytes: the third reaches half of 50.
    let (q, rx) = queue(1000, 50);
    assert_eq!(quiet_until_woken(&q, rx).await, 3, "half of the bytes");
}

#[tokio::test]
async fn writer_orders_replay_before_held_live_and_drops_duplicates() {
    let (q, rx) = queue(100, 1 << 20);
    let (sink_tx, mut sink_rx) = futures_channel_sink();
    let room: Arc<str> = "r".into();
    q.push(Outbound::BeginCatchup(room.clone()));
    q.push(Outbound::Msg(env("r", 3))); // live, arrives during catch-up
    q.push(Outbound::Msg(env("r", 4)));
    q.push(Outbound::Replay {
        room: room.clone(),
        from: StreamPosition::new("e", 1),
        msgs: vec![env("r", 2), env("r", 3)],
    });
    q.push(Outbound::Release(room.clone()));
    q.push(Outbound::Msg(env("r", 4))); // duplicate
    q.push(Outbound::Msg(env("r", 5)));
    q.push(Outbound::Msg(env("other", 9))); // not joined
    let closer = q.clone();
    let counted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut recording = settings(60_000);
    let record = counted.clone();
    recording.on_delivered = Arc::new(move |env: &Envelope, live| {
        record.lock().expect("record").push((env.seq, live));
    });
    let task = tokio::spawn(run_writer(sink_tx, rx, recording));
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match sink_rx.recv().await {
            Some(Message::Text(t)) => seen.push(t.to_string()),
            Some(_) => {}
            None => break,
        }
    }
    closer.close(SLOW_CONSUMER);
    let outcome = task.await.expect("writer");
    assert_eq!(
        seen,
        ["{\"seq\":2}", "{\"seq\":3}", "{\"seq\":4}", "{\"seq\":5}"]
    );
    assert_eq!(
        outcome.positions.get("r"),
        Some(&StreamPosition::new("e", 5))
    );
    assert_eq!(outcome.delivered, 4);
    // Each counted; only the live ones (the released 4 among them) as live: a replayed
    // message's age is no delivery latency.
    assert_eq!(
        *counted.lock().expect("counted"),
        [(2, false), (3, false), (4, true), (5, true)]
    );
    // The writer ends with the close frame of the reason, code and text.
    let mut close = None;
    while let Ok(m) = sink_rx.try_recv() {
        if let Message::Close(f) = m {
            close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
        }
    }
    assert_eq!(close, Some((1013, "slow consumer".to_string())));
}

/// A room caught up again on the same connection (a resume or re-join from an older
/// position): the replay overlaps what was written, and nothing is written twice.
#[tokio::test]
async fn a_second_catchup_of_a_room_writes_nothing_twice() {
    let (q, rx) = queue(100, 1 << 20);
    let (sink_tx, mut sink_rx) = futures_channel_sink();
    let room: Arc<str> = "r".into();
    q.push(Outbound::BeginCatchup(room.clone()));
    q.push(Outbound::Replay {
        room: room.clone(),
        from: StreamPosition::new("e", 0),
        msgs: vec![env("r", 1), env("r", 2), env("r", 3)],
    });
    q.push(Outbound::Release(room.clone()));
    q.push(Outbound::BeginCatchup(room.clone()));
    q.push(Outbound::Replay {
        room: room.clone(),
        from: StreamPosition::new("e", 1),
        msgs: vec![env("r", 2), env("r", 3), env("r", 4)],
    });
    q.push(Outbound::Release(room.clone()));
    let closer = q.clone();
    let task = tokio::spawn(run_writer(sink_tx, rx, settings(60_000)));
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match sink_rx.recv().await {
            Some(Message::Text(t)) => seen.push(t.to_string()),
            Some(_) => {}
            None => break,
        }
    }
    closer.close(SLOW_CONSUMER);
    let outcome = task.await.expect("writer");
    assert_eq!(
        seen,
        ["{\"seq\":1}", "{\"seq\":2}", "{\"seq\":3}", "{\"seq\":4}"]
    );
    assert_eq!(outcome.delivered, 4, "nothing written twice");
}

pub(super) fn settings(heartbeat_ms: u64) -> WriterSettings {
    WriterSettings {
        heartbeat: Duration::from_millis(heartbeat_ms),
        on_delivered: Arc::new(|_, _| {}),
    }
}

#[tokio::test]
async fn live_messages_held_behind_a_catch_up_count_against_the_byte_limit() {
    let (q, rx) = queue(100, 40);
    let (sink_tx, _sink_rx) = futures_channel_sink();
    let task = tokio::spawn(run_writer(sink_tx, rx, settings(60_000)));
    q.push(Outbound::BeginCatchup("r".into()));
    // Each is written (taken off the queue) into the hold: the queue stays small...
    for seq in 1..=6 {
        let _ = q.push_paced(Outbound::Msg(env("r", seq))).await;
    }
    // ...but the hold is over 40 bytes: the connection closes as a slow consumer.
    let outcome = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("writer stops")
        .expect("writer");
    assert_eq!(q.close_reason(), Some(SLOW_CONSUMER));
    assert_eq!(outcome.delivered, 0);
}

#[tokio::test]
async fn a_paced_push_waits_for_room_instead_of_overflowing() {
    let (q, mut rx) = queue(100, 60);
    assert!(q.push(Outbound::Msg(env("r", 1)))); // 9 bytes
    let chunk = Outbound::Replay {
        room: "r".into(),
        from: StreamPosition::new("e", 1),
        msgs: vec![env("r", 2), env("r", 3)], // 18 bytes: 27 <= 30 (half of 60) fits
    };
    assert!(q.push_paced(chunk).await);
    let big = Outbound::Replay {
        room: "r".into(),
        from: StreamPosition::new("e", 3),
        msgs: vec![env("r", 4), env("r", 5)],
    };
    let pusher = q.clone();
    let waiting = tokio::spawn(async move { pusher.push_paced(big).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "no room: the push waits");
    assert_eq!(q.close_reason(), None, "and does not overflow");
    // The writer takes the first two items off the queue.
    let (sink_tx, _sink_rx) = futures_channel_sink();
    let taken = [rx.try_next().expect("item"), rx.try_next().expect("item")];
    for item in &taken {
        rx.shared.bytes.fetch_sub(item.weight(), Ordering::Relaxed);
    }
    rx.shared.drained.notify_waiters();
    assert!(tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken")
        .expect("task"));
    drop(sink_tx);
}

/// A replay streaming into a client that does not read takes at most half the queue's
/// bytes: live traffic keeps the other half, and a live message that fits in it is queued,
/// not a slow-consumer close (docs/protocol.md, "Replays go at your pace").
#[tokio::test]
async fn a_replay_into_a_slow_reader_leaves_live_traffic_half_the_queue() {
    let (q, _rx) = queue(100, 40);
    // Chunks of one 9-byte message, nobody reading: as many as pacing lets in.
    let mut paced = 0;
    for seq in 1..10 {
        let chunk = Outbound::Replay {
            room: "r".into(),
            from: StreamPosition::new("e", seq - 1),
            msgs: vec![env("r", seq)],
        };
        let push = tokio::time::timeout(Duration::from_millis(50), q.push_paced(chunk));
        match push.await {
            Ok(pushed) => assert!(pushed, "queued"),
            Err(_) => break, // waits: the replay has all the queue it may take
        }
        paced += 1;
    }
    assert_eq!((paced, q.queued_bytes()), (2, 18), "half of 40 at most");
    // A live message of the other half's size (its frame is 20 bytes) is queued.
    let live = Envelope::for_test("other", 1, "x".repeat(20));
    assert_eq!(live.frame.len(), 20);
    assert_eq!(q.pusher().deliver(&live, Via::Direct), Delivered::Queued);
    assert_eq!(q.close_reason(), None, "not a slow consumer");
    // More than the queue's bound of bytes is still an overflow.
    assert!(!q.push(Outbound::Frame("x".repeat(3).into())));
    assert_eq!(q.close_reason(), Some(SLOW_CONSUMER));
}

/// A sink backed by an unbounded channel, standing in for the socket.
fn futures_channel_sink() -> (
    impl Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
    mpsc::UnboundedReceiver<Message>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = futures_util::sink::unfold(tx, |tx, msg: Message| async move {
        let _ = tx.send(msg);
        Ok::<_, tokio_tungstenite::tungstenite::Error>(tx)
    });
    (Box::pin(sink), rx)
}

#[test]
fn an_emptied_queue_gives_its_memory_back_and_ends_with_its_last_producer() {
    let (q, mut rx) = queue(100, 1 << 20);
    for i in 0..50 {
        assert!(q.frame(format!("{i}")));
    }
    let mut n = 0;
    while rx.try_next().is_ok() {
        n += 1;
    }
    assert_eq!(n, 50, "in order, all of them");
    assert_eq!(rx.shared.items().queue.capacity(), 0, "after a burst");
    assert!(q.frame("one reply"));
    assert!(rx.try_next().is_ok());
    assert_eq!(rx.shared.items().queue.capacity(), 0, "after a single item");
    let q2 = q.clone();
    drop(q);
    assert!(matches!(rx.try_next(), Err(false)), "a producer is left");
    drop(q2);
    assert!(
        matches!(rx.try_next(), Err(true)),
        "no producer left: the end"
    );
}

#[test]
fn without_a_writer_nothing_is_queued_and_nobody_is_blamed() {
    let (q, rx) = queue(100, 1 << 20);
    drop(rx);
    assert!(!q.frame("late"));
    assert_eq!(q.close_reason(), None, "not a slow consumer");
    assert!(
        !OutboundQueue::opaque().frame("x"),
        "an opaque queue takes no frame"
    );
}

#[tokio::test]
async fn closed_resolves_for_a_stop_made_before_or_after_it() {
    use futures_util::FutureExt;
    let (q, _rx) = queue(8, 1024);
    assert!(q.closed().now_or_never().is_none(), "open: closed waits");
    let waiting = q.closed();
    tokio::pin!(waiting);
    assert!(waiting.as_mut().now_or_never().is_none());
    let made_before_polled = q.closed();
    q.close(WRITE_TIMEOUT);
    assert!(q.is_closing());
    assert!(waiting.now_or_never().is_some(), "a polled waiter is woken");
    assert!(
        made_before_polled.now_or_never().is_some(),
        "an unpolled one too"
    );
    assert!(
        q.closed().now_or_never().is_some(),
        "made after: resolves at once"
    );
}

/// Every connection's queue is one allocation of `Shared` behind an `Arc` (two counts):
/// jemalloc's class here is 320 bytes, the next 384.
#[test]
fn the_queues_shared_state_stays_in_its_size_class() {
    let size = std::mem::size_of::<Shared>() + 16;
    assert!(size <= 320, "the queue's allocation is {size} bytes");
}

/// What a fast-path delivery reads of a member's queue lies in the first two cache lines
/// of its allocation (the `Arc`'s two counts, then `Shared`): a fan-out meets every
/// member's lines cold, and each more line is a miss per delivery (see `Shared`).
#[test]
fn the_fast_paths_fields_fill_the_first_two_cache_lines() {
    let (q, _rx) = queue(8, 1024);
    // `Arc`'s allocation holds its strong and weak counts, then the value.
    let start = Arc::as_ptr(&q.shared) as usize - 2 * std::mem::size_of::<usize>();
    let end_of = |p: usize, size: usize| p + size - start;
    fn at<T>(field: &T) -> (usize, usize) {
        (field as *const T as usize, std::mem::size_of::<T>())
    }
    let shared = &*q.shared;
    let items = shared.items();
    let (p, n) = at(&shared.stopping);
    let first_line = [
        end_of(p, n),
        end_of(at(&shared.items).0, 8), // the lock's word
        end_of(at(&items.closed).0, 1),
        end_of(at(&items.busy).0, 1),
        end_of(at(&items.fast).0, at(&items.fast).1),
    ];
    assert!(first_line.iter().all(|&end| end <= 64), "{first_line:?}");
    let (p, n) = at(&items.queue);
    let (r, m) = at(&items.order.delivered);
    let second_line = [end_of(p, n), end_of(r, m)];
    assert!(second_line.iter().all(|&end| end <= 128), "{second_line:?}");
}

/// A drain's `goaway` to a queue at its bound still goes, after the backlog, with its
/// close: it used to overflow it (1013 `slow consumer`, the backlog and the goaway
/// dropped) where the client should have read its backlog and then reconnected.
#[test]
fn a_goaway_to_a_full_queue_goes_behind_the_backlog_and_is_no_overflow() {
    let (q, mut rx) = queue(2, 1 << 20);
    assert!(q.frame("a") && q.frame("b"));
    assert!(!q.has_slot(), "full by count");
    assert!(q.goaway("{\"type\":\"goaway\"}", crate::disconnect::DRAINING));
    assert_eq!(q.close_reason(), None, "not a slow consumer");
    let items: Vec<Outbound> = std::iter::from_fn(|| rx.try_recv_for_test()).collect();
    assert!(
        matches!(
            items.as_slice(),
            [
                Outbound::Frame(_),
                Outbound::Frame(_),
                Outbound::Frame(g),
                Outbound::Close(r),
            ] if g.contains("goaway") && *r == crate::disconnect::DRAINING
        ),
        "{items:?}"
    );
    let weights: usize = items.iter().map(Outbound::weight).sum();
    assert_eq!(
        q.queued_bytes(),
        weights,
        "counted as the writer takes them off"
    );
}
