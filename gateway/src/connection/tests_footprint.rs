//! What an idle connection weighs: the state of its two tasks, most of an idle
//! connection's memory (the idle rows of bench/summary.md). Every field such a task holds
//! across an await is paid by every connection for its whole life, so a timer, a second
//! copy of a function's arguments (an async fn keeps one) or a command's future that
//! slips into them shows here. Sizes are the compiler's layout, the same in every build
//! profile; the bounds leave ~10 % room for a compiler's layout changes.

use super::tests::Harness;
use crate::outbound;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The socket loop's future (session included): 992 bytes with rustc 1.95 (1128 while
/// it also waited on a channel of the node's key changes).
const SOCKET_LOOP_MAX: usize = 1090;
/// The writer's future: 472 bytes with rustc 1.95 (664 while it held the ping timer,
/// now the node's [`heartbeat`](crate::heartbeat)).
const WRITER_MAX: usize = 520;

async fn socket() -> WebSocketStream<tokio::io::DuplexStream> {
    let (io, _peer) = tokio::io::duplex(64);
    WebSocketStream::from_raw_socket(io, Role::Server, None).await
}

#[tokio::test]
async fn an_idle_connections_tasks_stay_small() {
    let h = Harness::fresh("u").await;
    let slots = crate::node::Slots {
        ip: h.node.take_ip_slot([127, 0, 0, 1].into()).expect("ip slot"),
        user: h.node.take_user_slot("u").expect("user slot"),
    };
    let identity = h.session.identity.clone();
    let socket_loop = super::serve(
        h.node.clone(),
        socket().await,
        None,
        identity,
        slots,
        Default::default(),
    );
    let size = std::mem::size_of_val(&socket_loop);
    assert!(
        size <= SOCKET_LOOP_MAX,
        "the socket loop's future is {size} bytes"
    );

    let (sink, _stream) = futures_util::StreamExt::split(socket().await);
    let (_queue, rx) = outbound::queue(8, 1024);
    let settings = super::writer_settings(&h.node);
    let writer = outbound::run_writer(sink, rx, settings);
    let size = std::mem::size_of_val(&writer);
    assert!(size <= WRITER_MAX, "the writer's future is {size} bytes");
}
