//! The socket loop's reading while a command's output is queued ([`pump`]), on a real
//! WebSocket over an in-memory pipe with paused time.

use super::tests::config;
use super::{pump, Reader, MAX_BACKLOG};
use crate::node::Node;
use crate::outbound;
use futures_util::SinkExt;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A reader on `node` over an in-memory pipe whose client has sent `commands`.
async fn piped(
    node: &std::sync::Arc<Node>,
    commands: impl IntoIterator<Item = String>,
) -> (
    Reader<WebSocketStream<DuplexStream>>,
    outbound::OutboundQueue,
    WebSocketStream<DuplexStream>,
) {
    let (server, client) = tokio::io::duplex(1 << 22);
    let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    for text in commands {
        client.send(Message::text(text)).await.expect("send");
    }
    let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let (_sink, stream) = futures_util::StreamExt::split(server);
    let (queue, _rx) = outbound::queue(8, 1024);
    queue.heard(node.clock_ms());
    let reader = Reader {
        stream,
        node: node.clone(),
        id: 1,
        queue: queue.clone(),
    };
    (reader, queue, client)
}

/// A delivery of `secs` (a long replay read slowly).
async fn delivery(secs: u64) -> bool {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    true
}

/// With the backlog full the socket is not read: the client's pongs wait unread behind
/// its commands for as long as the delivery takes. The heartbeat is kept alive meanwhile
/// (before, a client that pipelined more than 32 commands behind a long replay was closed
/// with 1001 `heartbeat timeout` although it read and answered every ping).
#[tokio::test(start_paused = true)]
async fn a_full_backlog_keeps_the_heartbeat_alive_while_a_delivery_lasts() {
    let mut c = config();
    c.heartbeat.interval = Duration::from_secs(1);
    let node = Node::new(c, Default::default()).expect("node");
    let pings = (0..40).map(|id| format!(r#"{{"type":"ping","id":{id}}}"#));
    let (mut reader, queue, client) = piped(&node, pings).await;
    let mut backlog = VecDeque::new();
    // Ten heartbeat intervals.
    assert!(pump(delivery(10), &mut reader, &mut backlog).await);
    assert_eq!(
        backlog.len(),
        MAX_BACKLOG,
        "reading stopped at a full backlog"
    );
    let silent = node.clock_ms() - queue.heard_at();
    assert!(
        silent <= 1_000,
        "last heard {silent} ms ago: the heartbeat would close it"
    );
    drop(client);
}

/// Large commands fill the backlog by bytes before its count: it stops reading once it
/// holds `limits.maxFrameBytes`, not 32 frames of that size.
#[tokio::test(start_paused = true)]
async fn large_commands_fill_the_backlog_by_bytes() {
    let node = Node::new(config(), Default::default()).expect("node");
    let max = node.config.limits.max_frame_bytes;
    let body = "x".repeat(max / 3);
    let sends =
        (0..40).map(|id| format!(r#"{{"type":"send","id":{id},"room":"r","body":"{body}"}}"#));
    let (mut reader, _queue, client) = piped(&node, sends).await;
    let mut backlog = VecDeque::new();
    assert!(pump(delivery(5), &mut reader, &mut backlog).await);
    let held: usize = backlog.iter().map(|c| c.len()).sum();
    assert_eq!(
        backlog.len(),
        3,
        "each a third of the bound and a little more"
    );
    assert!(held >= max && held < 2 * max, "{held} bytes held");
    drop(client);
}
