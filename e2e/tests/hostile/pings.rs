//! A client that pings and never reads: tungstenite queues a pong per ping in its write
//! buffer while the socket is full, and the writer's next heartbeat ping finds that buffer
//! full. The writer used to end there without closing the connection: nothing closed it
//! (the client kept sending, so the heartbeat saw it alive) and each such connection
//! pinned about 1 MiB of pongs until its token expired.

use super::small_window_client;
use e2e::{test_config, TestGateway};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_and_never_reads_is_closed_as_a_slow_consumer() {
    // Long enough that the socket and the write buffer are full before the first ping.
    let heartbeat = Duration::from_secs(5);
    let mut c = test_config();
    c.heartbeat.interval = heartbeat;
    // Pings as fast as the socket takes them: the frame limit must not close it first.
    c.limits.frame_rate = 1e6;
    c.limits.frame_burst = 1_000_000;
    let gw = TestGateway::start(c).await;
    let ws = small_window_client(&gw, "pinger").await;
    let (mut tx, mut rx) = ws.split();
    let started = Instant::now();
    let closed = "chatgateway_connections_closed_total{reason=\"slow consumer\"}";
    let pinging = tokio::spawn(async move {
        // Pongs of 64 bytes (62 of payload, a 2-byte header) fill the write buffer to
        // its last byte (its bound is a multiple of 64: 8 KiB now, 1,118,208 bytes before),
        // so the heartbeat's own ping (2 bytes) finds no room. A payload that left room
        // would let the ping in and the write timeout close the connection instead.
        let payload = vec![b'p'; 62];
        let mut sent = 0u64;
        while tx.send(Message::Ping(payload.clone().into())).await.is_ok() {
            sent += 1;
            if sent % 1_000 == 0 {
                tokio::task::yield_now().await;
            }
        }
        sent
    });
    while gw.sample(closed).await.unwrap_or(0.0) < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pinging client is still open after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("closed {:?} after the first ping", started.elapsed());
    // Its socket ends: what was buffered for it can be read, then the close or an error.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(m)) = rx.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the pinging client's socket was not closed");
    pinging.abort();
    gw.stop().await;
}
