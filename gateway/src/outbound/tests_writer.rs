//! How the writer ends: the write timeout, the close frame's time, and a failed write,
//! which closes the queue with it.

use super::tests::{env, settings};
use super::*;
use crate::disconnect::WRITE_TIMEOUT;
use crate::protocol::StreamPosition;
use futures_util::Sink;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{Error, Message};

/// Messages the writer took but never got onto the socket (the write timed out) are not
/// in the positions it reports: the session saved at the close must not skip them.
#[tokio::test]
async fn messages_a_timed_out_write_never_sent_are_not_reported_written() {
    let (q, rx) = queue(100, 1 << 20);
    let room: Arc<str> = "r".into();
    assert!(q.push(Outbound::BeginCatchup(room.clone())));
    assert!(q.push(Outbound::Replay {
        room: room.clone(),
        from: StreamPosition::new("e", 1),
        msgs: vec![env("r", 2), env("r", 3)],
    }));
    assert!(q.push(Outbound::Release(room.clone())));
    assert!(q.push(Outbound::Msg(env("r", 4))));
    let task = tokio::spawn(run_writer(stalled_sink(), rx, settings(100)));
    let outcome = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("writer gives up")
        .expect("writer");
    assert_eq!(q.close_reason(), Some(WRITE_TIMEOUT));
    // Where the client stood before the replay: none of 2, 3, 4 reached it.
    assert_eq!(
        outcome.positions.get("r"),
        Some(&StreamPosition::new("e", 1))
    );
}

#[tokio::test]
async fn a_write_that_never_completes_closes_within_two_heartbeats() {
    let (q, rx) = queue(100, 1 << 20);
    let started = Instant::now();
    let task = tokio::spawn(run_writer(stalled_sink(), rx, settings(100)));
    assert!(q.frame("hello"));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("writer gives up")
        .expect("writer");
    assert_eq!(q.close_reason(), Some(WRITE_TIMEOUT));
    assert!(started.elapsed() >= Duration::from_millis(200));
}

/// A socket whose peer stopped reading: every send stays pending.
pub(super) fn stalled_sink(
) -> impl Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin {
    Box::pin(futures_util::sink::unfold(
        (),
        |_, _msg: Message| async move {
            std::future::pending::<()>().await;
            Ok::<_, tokio_tungstenite::tungstenite::Error>(())
        },
    ))
}

/// The close frame is a write like any other: after a slow-consumer close it gets the
/// write timeout (a client still reading gets it behind its backlog); after a write
/// timeout (the socket is known stalled) or in a drain it gets one second.
#[tokio::test(start_paused = true)]
async fn the_close_frame_gets_the_write_timeout_unless_the_write_timed_out() {
    let draining = crate::disconnect::DRAINING;
    for (close, took) in [(Some(SLOW_CONSUMER), 20), (None, 21), (Some(draining), 1)] {
        let (q, rx) = queue(100, 1 << 20);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(run_writer(stalled_sink(), rx, settings(10_000)));
        assert!(q.frame("hello"));
        tokio::task::yield_now().await;
        if let Some(reason) = close {
            q.close(reason);
        }
        task.await.expect("writer");
        // Paused time: the clock moves only to the next timer, so this is exact.
        assert_eq!(started.elapsed().as_secs(), took, "{close:?}");
        assert_eq!(q.close_reason(), Some(close.unwrap_or(WRITE_TIMEOUT)));
    }
}

/// A socket whose every write fails with `error` (as tungstenite's does, again and again:
/// the writer still tries its close frame).
struct FailingSink(fn() -> Error);

impl Sink<Message> for FailingSink {
    type Error = Error;
    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn start_send(self: std::pin::Pin<&mut Self>, _: Message) -> Result<(), Error> {
        Err((self.0)())
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Err((self.0)()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Err((self.0)()))
    }
}

/// A write that fails stops the queue with the writer, so the socket loop (which waits
/// on the queue) ends the connection. It used to stop only the writer: a client that kept
/// sending stayed open, heard by the heartbeat, with nothing left to write to it. A full
/// write buffer (of pongs to a client that pings and never reads) is a slow consumer; a
/// failed socket is the client gone, counted as its own close.
#[tokio::test]
async fn a_failed_write_closes_the_queue_with_the_writer() {
    let full = || Error::WriteBufferFull(Box::new(Message::Ping(Default::default())));
    let reset = || Error::Io(std::io::ErrorKind::ConnectionReset.into());
    for (error, reason) in [(full as fn() -> Error, Some(SLOW_CONSUMER)), (reset, None)] {
        let (q, rx) = queue(100, 1 << 20);
        let task = tokio::spawn(run_writer(FailingSink(error), rx, settings(10_000)));
        assert!(q.ping());
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer ends")
            .expect("writer");
        assert!(q.is_closing(), "{reason:?}");
        assert_eq!(q.close_reason(), reason);
        assert!(!q.ping(), "nothing more is queued");
    }
}
