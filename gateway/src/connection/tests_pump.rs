//! The socket loop's reading while a command's output is queued ([`pump`]), on a real
//! WebSocket over an in-memory pipe with paused time.

use super::tests::config;
use super::{pump, Reader, MAX_BACKLOG};
use crate::node::Node;
use crate::outbound;
use futures_util::SinkExt;
use std::collections::VecDeque;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// With the backlog full the socket is not read: the client's pongs wait unread behind
/// its commands for as long as the delivery takes. The heartbeat is kept alive meanwhile
/// (before, a client that pipelined more than 32 commands behind a long replay was closed
/// with 1001 `heartbeat timeout` although it read and answered every ping).
#[tokio::test(start_paused = true)]
async fn a_full_backlog_keeps_the_heartbeat_alive_while_a_delivery_lasts() {
    let mut c = config();
    c.heartbeat.interval = Duration::from_secs(1);
    let node = Node::new(c, Default::default()).expect("node");
    let (server, client) = tokio::io::duplex(1 << 20);
    let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    for id in 0..40 {
        let ping = format!(r#"{{"type":"ping","id":{id}}}"#);
        client.send(Message::text(ping)).await.expect("send");
    }
    let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let (_sink, stream) = futures_util::StreamExt::split(server);
    let (queue, _rx) = outbound::queue(8, 1024);
    queue.heard(node.clock_ms());
    let mut reader = Reader {
        stream,
        node: node.clone(),
        id: 1,
        queue: queue.clone(),
    };
    let mut backlog = VecDeque::new();
    // A delivery of ten heartbeat intervals (a long replay read slowly).
    let delivery = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        true
    };
    assert!(pump(delivery, &mut reader, &mut backlog).await);
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
